"""`dexrt fit`: a model of one patient from the planning CT (docs/fit.md)."""
