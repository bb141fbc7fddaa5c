"""`dexrt serve`: a DICOM node that receives radiographs and sends on their bone and soft-tissue images.

config.py (TOML and command-line settings, bounded), gate.py (accepting connections: TLS and the association
request within a deadline, before pynetdicom), node.py (associations, C-ECHO/C-STORE handlers, conversion
workers), spool.py (the durable queue on disk) and ledger.py (the UIDs handed on), forward.py (C-STORE to the
destinations), contexts.py (SOP classes, transfer syntaxes, TLS), logs.py (text or JSON event lines). Needs
`pip install 'dexrt[serve]'`. See docs/serve.md.
"""

from __future__ import annotations

from dexrt.pipelines.serve.config import Destination, ServeConfig, build_config
from dexrt.pipelines.serve.node import Node

__all__ = ["Destination", "Node", "ServeConfig", "build_config"]
