"""FP32 ONNX generator -> FP16 ONNX generator, for TensorRT's strongly typed networks.

TensorRT 11 removed the FP16 builder flag: precision comes from the graph's own types. This rewrites a float32
graph so every float tensor is float16, with the graph's input and output float16 too (the CUDA pre/post
kernels read and write float16 directly). Normalization layers, whose variance can overflow or lose all
precision in float16, stay in float32 between Casts, and so do the inputs that ONNX requires to be float32
(Resize's scales and roi).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dexrt._errors import ModelError

FP32_OPS = frozenset({"InstanceNormalization", "LayerNormalization", "GroupNormalization"})
# (op type, input index) pairs that ONNX types as float32 whatever the data's type.
_FLOAT_ONLY_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
_FP16_MAX = float(np.finfo(np.float16).max)


def convert_to_fp16(model: Any, *, keep_fp32_ops: frozenset[str] = FP32_OPS) -> Any:
    """Return a float16 copy of the ONNX ``model`` (an ``onnx.ModelProto``); the input is not modified."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ModelError(f"cannot infer the model's tensor types to convert it to FP16: {exc}") from exc
    graph = inferred.graph
    elem_type: dict[str, int] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        elem_type[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        elem_type[init.name] = init.data_type

    # Float tensors that must stay float32: inputs of kept ops and the float-only inputs.
    keep32: set[str] = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name and ((node.op_type, i) in _FLOAT_ONLY_INPUTS or node.op_type in keep_fp32_ops):
                keep32.add(name)
    initializer_names = {init.name for init in graph.initializer}
    constant_outputs = {node.output[0] for node in graph.node if node.op_type == "Constant"}

    out = onnx.ModelProto()
    out.CopyFrom(inferred)
    g = out.graph
    del g.value_info[:]  # stale float32 types; consumers re-infer them

    for init in g.initializer:
        if init.data_type == FLOAT and init.name not in keep32:
            init.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(init)), init.name))
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = HALF

    nodes: list[Any] = []
    for node in g.node:
        if node.op_type == "Constant":
            _constant_to_half(node, keep32)
            nodes.append(node)
            continue
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF
        if node.op_type in keep_fp32_ops:
            # float16 producers -> Cast to float32 -> the op in float32 -> Cast back for float16 consumers.
            for i, name in enumerate(node.input):
                if name and elem_type.get(name) == FLOAT and name not in initializer_names | constant_outputs:
                    cast = f"{name}__fp32_for_{node.name or node.op_type}_{i}"
                    nodes.append(helper.make_node("Cast", [name], [cast], to=FLOAT, name=cast))
                    node.input[i] = cast
            renamed = []
            for i, name in enumerate(node.output):
                if name and elem_type.get(name) == FLOAT:
                    node.output[i] = f"{name}__fp32"
                    renamed.append((node.output[i], name))
            nodes.append(node)
            for src, dst in renamed:
                nodes.append(helper.make_node("Cast", [src], [dst], to=HALF, name=f"{dst}__to_fp16"))
            continue
        for i, name in enumerate(node.input):
            # A float-only input computed in the graph (not a constant) is cast back to float32.
            if name and (node.op_type, i) in _FLOAT_ONLY_INPUTS and elem_type.get(name) == FLOAT \
                    and name not in initializer_names | constant_outputs:
                cast = f"{name}__fp32_for_{node.name or node.op_type}_{i}"
                nodes.append(helper.make_node("Cast", [name], [cast], to=FLOAT, name=cast))
                node.input[i] = cast
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    try:
        onnx.checker.check_model(out)
        onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"the FP16 conversion produced an invalid model ({exc}); build in fp32") from exc
    return out


def _to_half(values: np.ndarray) -> np.ndarray:
    # Saturate rather than overflow to inf: a large weight is then off by rounding, not broken.
    return np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _constant_to_half(node: Any, keep32: set[str]) -> None:
    from onnx import TensorProto, numpy_helper

    if node.output[0] in keep32:
        return
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(attr.t)), attr.t.name))
        elif attr.name in ("value_float", "value_floats"):
            raise ModelError(f"Constant node {node.name!r} uses {attr.name}, which cannot be float16; "
                             "export the model with tensor constants")
