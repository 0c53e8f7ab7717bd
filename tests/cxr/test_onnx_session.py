"""The served ONNX Runtime session: batches run as power-of-two pieces, with the same answers as one run."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cxr.onnx_session import cpu_session, piece_sizes, power_of_two_pieces, run_in_pieces


@pytest.mark.parametrize("n", [*range(0, 70), 97, 1000])
def test_pieces_cover_the_batch_in_power_of_two_sizes(n):
    pieces = power_of_two_pieces(n, largest=32)
    sizes = [p.stop - p.start for p in pieces]
    assert sum(sizes) == n
    assert [p.start for p in pieces] == list(np.cumsum([0, *sizes])[:-1])  # contiguous, in order
    assert all(s & (s - 1) == 0 and 1 <= s <= 32 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes[sizes.count(32):])) == len(sizes) - sizes.count(32)  # below the cap, each size once


@pytest.mark.parametrize("max_batch, sizes", [(1, [1]), (2, [1, 2]), (24, [1, 2, 4, 8, 16]),
                                              (32, [1, 2, 4, 8, 16, 32])])
def test_piece_sizes_are_every_size_the_pieces_can_take(max_batch, sizes):
    assert piece_sizes(max_batch) == sizes
    largest = sizes[-1]
    seen = {p.stop - p.start for n in range(1, 3 * max_batch) for p in power_of_two_pieces(n, largest)}
    assert seen == set(sizes)  # warming these sizes warms every shape a served batch can reach


def test_piece_sizes_refuse_no_batch():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        piece_sizes(0)


@pytest.mark.parametrize("n, largest", [(-1, 8), (4, 0), (4, 12)])
def test_pieces_refuse_bad_arguments(n, largest):
    with pytest.raises(ValueError, match="power-of-two"):
        power_of_two_pieces(n, largest)


def _two_output_graph(path):
    """y = x @ w (batch-first, dynamic batch) and z = sum(x) per row: two outputs, as the classifier has."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [6, 3], np.arange(18, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("ReduceSum", ["x"], ["z"], axes=[1], keepdims=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)


def test_run_in_pieces_answers_as_one_run_through_few_shapes(tmp_path):
    _two_output_graph(tmp_path / "m.onnx")
    session = cpu_session(tmp_path / "m.onnx", threads=1)
    seen = []
    run = session.run
    session.run = lambda names, feeds: seen.append(len(feeds["x"])) or run(names, feeds)
    x = np.random.default_rng(0).normal(size=(29, 6)).astype(np.float32)
    y, z = run_in_pieces(session, ["y", "z"], {"x": x}, largest=8)
    np.testing.assert_allclose(y, x @ np.arange(18, dtype=np.float32).reshape(6, 3), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z[:, 0], x.sum(1), rtol=1e-5, atol=1e-5)
    assert seen == [8, 8, 8, 4, 1]
    (only,) = run_in_pieces(session, ["z"], {"x": x[:4]}, largest=8)  # a power of two runs once, as it is
    assert seen[-1] == 4 and only.shape == (4, 1)


def test_arena_policy_is_named_or_refused(tmp_path):
    _two_output_graph(tmp_path / "m.onnx")
    assert cpu_session(tmp_path / "m.onnx", threads=1, arena="shrink").run(["z"], {"x": np.ones((2, 6), np.float32)})
    with pytest.raises(ValueError, match="arena must be"):
        cpu_session(tmp_path / "m.onnx", arena="grow")
