"""Rewrite passes, one concern per module (onnx-ir style); the model layer they work on
(walk, types and shapes) is :mod:`lmul_onnx.graph`:

* :mod:`selection` -- which MatMul/Gemm/Mul/Conv/ConvTranspose nodes to convert, and why the others stay.
* :mod:`exact_products` -- the rule that leaves products by exact powers of two and 0/1
  masks exact (they need no multiplier; L-Mul would only add error).
* :mod:`rewrite` -- the in-place pass that swaps selected nodes into the ``lmul`` domain,
  in the main graph, every subgraph and every model-local function.
* :mod:`offsets` -- the SPEC section 4 ``offset`` of the nodes a rewrite converted.
* :mod:`fold_pad` -- folds zero ``Pad`` nodes into the ``pads`` of the ``LMulConv`` nodes they feed.
"""
