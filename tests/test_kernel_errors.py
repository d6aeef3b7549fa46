"""Bad shapes, types and attributes give an onnxruntime error naming the node, never a
crash. Each case runs in its own process: a crash fails that test, not the whole run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

CASES = {
    # name: (op, dtypes, attributes, input shapes, failing stage, message fragment)
    "mul_shapes": ("LMul", ["float32"] * 2, {}, [[2, 3], [4]], "run", "cannot be broadcast"),
    "matmul_inner": ("LMulMatMul", ["float32"] * 2, {}, [[2, 3], [4, 5]], "run", "inner dimensions differ"),
    "matmul_scalar": ("LMulMatMul", ["float32"] * 2, {}, [[], [3]], "run", "at least one dimension"),
    "matmul_batch": ("LMulMatMul", ["float32"] * 2, {}, [[2, 3, 4], [3, 4, 5]], "run", "batch dimensions"),
    "gemm_rank": ("LMulGemm", ["float32"] * 2, {}, [[2, 3, 4], [4, 5]], "run", "must be 2-D"),
    "gemm_inner": ("LMulGemm", ["float32"] * 2, {"transB": 1}, [[2, 3], [3, 5]], "run", "inner dimensions"),
    "gemm_c": (
        "LMulGemm",
        ["float32"] * 3,
        {},
        [[2, 3], [3, 4], [3]],
        "run",
        "cannot be broadcast to (M, N)",
    ),
    "gemm_c_rank": (
        "LMulGemm",
        ["float32"] * 3,
        {},
        [[2, 3], [3, 4], [1, 2, 4]],
        "run",
        "cannot be broadcast",
    ),
    "gemm_trans_value": (
        "LMulGemm",
        ["float32"] * 2,
        {"transA": 2},
        [[2, 3], [3, 4]],
        "create",
        "must be 0 or 1",
    ),
    "gemm_alpha_int": (
        "LMulGemm",
        ["float32"] * 2,
        {"alpha": 2},
        [[2, 3], [3, 4]],
        "create",
        "must be a float",
    ),
    "bits_zero": ("LMul", ["float32"] * 2, {"mantissa_bits": 0}, [[2], [2]], "create", "1..23"),
    "bits_too_many": (
        "LMulMatMul",
        ["float32"] * 2,
        {"mantissa_bits": 24},
        [[2, 2], [2, 2]],
        "create",
        "1..23",
    ),
    "bits_float16": (
        "LMul",
        ["float16"] * 2,
        {"mantissa_bits": 11},
        [[2], [2]],
        "create",
        "1..10 for float16",
    ),
    "bits_bfloat16": ("LMulGemm", ["bfloat16"] * 2, {"mantissa_bits": 8}, [[2, 2], [2, 2]], "create", "1..7"),
    "bits_float_attr": (
        "LMul",
        ["float32"] * 2,
        {"mantissa_bits": 4.0},
        [[2], [2]],
        "create",
        "must be an int",
    ),
    "bits_string_attr": (
        "LMul",
        ["float32"] * 2,
        {"mantissa_bits": "4"},
        [[2], [2]],
        "create",
        "must be an int",
    ),
    "integer_inputs": ("LMul", ["int32"] * 2, {}, [[2], [2]], "create", "LMul"),
    "mixed_types": ("LMulMatMul", ["float32", "float16"], {}, [[2, 2], [2, 2]], "create", "LMulMatMul"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_an_error_not_a_crash(name: str, run_bad_cases: Callable) -> None:
    *case, stage, fragment = CASES[name]
    outcome = run_bad_cases({name: case})[name]
    assert outcome["stage"] == stage, outcome
    assert fragment in outcome["error"], outcome["error"]
    if stage == "run" or name.startswith(("bits_", "gemm_")):
        assert "bad_node" in outcome["error"], "the error must name the node"
