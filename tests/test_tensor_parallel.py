"""Tensor parallelism (--tensor): logical axis rules, equality with one device, restore across meshes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxseq import parallel, scaling, train
from jaxseq.checkpoint import Checkpointer
from jaxseq.data.lm import LMBatches
from jaxseq.errors import ConfigError
from jaxseq.manifest import Manifest, tree_signature
from jaxseq.models.transformer_lm import TransformerLM
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks import lm as lm_task
from jaxseq.tasks import runner

VOCAB = 12                 # divisible by --tensor 2: the embedding and output layer are split by vocabulary too
IDS = np.random.default_rng(0).integers(0, VOCAB, size=2000).astype(np.int32)
STEPS = 2


def _model():
    return TransformerLM(vocab_size=VOCAB, context=8, d_model=16, num_heads=4, num_layers=1, ffn=32, norm="pre")


def _train(mesh):
    # plain SGD: Adam rescales each gradient to about lr, so float noise in a gradient that is zero in exact
    # arithmetic (the key bias: softmax ignores a constant added to every score) would flip whole updates
    model, tx = _model(), make_optimizer(OptimConfig(optimizer="sgd", lr=0.5), STEPS)
    batches = LMBatches(IDS, seq_len=8, batch_size=8, sampling="random", seed=0)
    state = train.create_state(model, tx, batches.batch(0, 0), 0, mesh)
    config = train.TrainConfig(steps=STEPS, eval_every=0, log_every=1, progress=False)
    result = train.fit(model, state, tx, batches, total_steps=STEPS, config=config, mesh=mesh)
    return result.state, [h["loss"] for h in result.history if h["split"] == "train"]


@pytest.fixture(scope="module")
def single_device():
    state, losses = _train(parallel.make_mesh(1))
    return jax.device_get(state), losses


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _spec(state, *path):
    leaf = state.params
    for key in path:
        leaf = leaf[key]
    return _trimmed(leaf.sharding.spec)


def _trimmed(spec):
    """``P("tensor", None)`` and ``P("tensor")`` are the same layout."""
    axes = list(spec)
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


@pytest.mark.parametrize("fsdp", [1, 2], ids=["data2-tensor2", "fsdp2-tensor2"])
def test_tensor_parallel_steps_equal_one_device(single_device, fsdp, tmp_path):
    reference, losses1 = single_device
    mesh = parallel.make_mesh(4, fsdp=fsdp, tensor=2)
    state, losses = _train(mesh)
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    _assert_close(jax.device_get(state.params), reference.params)
    # Megatron layout: Q/K/V and FFN-in split by columns (heads, mlp), attention-out and FFN-out by rows
    f = "fsdp" if fsdp > 1 else None
    block = ("stack", "block_0")
    assert _spec(state, *block, "self_attention", "query", "kernel") == _trimmed(P(f, "tensor"))
    assert _spec(state, *block, "self_attention", "out", "kernel") == _trimmed(P("tensor", f))
    assert _spec(state, *block, "ffn", "dense1", "kernel") == _trimmed(P(f, "tensor"))
    assert _spec(state, *block, "ffn", "dense2", "kernel") == _trimmed(P("tensor", f))
    assert _spec(state, "embedder", "embed", "embedding") == _trimmed(P("tensor", f))
    q = state.params["stack"]["block_0"]["self_attention"]["query"]["kernel"]
    assert q.addressable_shards[0].data.size == q.size // (2 * fsdp)
    # the scaling calculator (docs/SCALING.md) predicts each device's share exactly
    held = sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(state.params))
    assert scaling.sharded_bytes(state.params, (2 // fsdp, fsdp, 2)) == held
    if fsdp == 1:
        _restore_under_other_meshes(state, tmp_path)


def _restore_under_other_meshes(state, tmp_path):
    """Saved under (data 2, tensor 2): restored exactly under (data 4) and under one device."""
    manifest = Manifest(task="lm", model={}, vocab={}, params=tree_signature(state.params))
    saver = Checkpointer(tmp_path / "checkpoints", async_save=True)
    try:
        saver.save(STEPS, state, {"position": 1}, manifest.to_dict())
    finally:
        saver.close()
    saved = jax.device_get(state)
    for mesh in (parallel.make_mesh(4), parallel.make_mesh(1)):
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                          abstract, parallel.state_sharding_tree(abstract, mesh))
        reader = Checkpointer(tmp_path / "checkpoints", read_only=True)
        try:
            restored, data, step = reader.restore(abstract, manifest)
        finally:
            reader.close()
        assert step == STEPS and data == {"position": 1}
        q = restored.params["stack"]["block_0"]["self_attention"]["query"]["kernel"]
        assert q.sharding.mesh.devices.size == mesh.devices.size and q.sharding.is_fully_replicated
        for x, y in zip(jax.tree_util.tree_leaves(jax.device_get(restored)), jax.tree_util.tree_leaves(saved)):
            np.testing.assert_array_equal(x, y)


def test_logical_rules():
    sizes = {"data": 1, "fsdp": 2, "tensor": 4}
    names = parallel.logical_axes("stack/blocks/self_attention/query/kernel", 3)   # scan_layers: a layer axis
    assert names == (None, "embed", "heads")
    assert parallel.state_spec((2, 16, 16), names, sizes) == P(None, "fsdp", "tensor")
    # Adam's copy of a parameter has the same dictionary keys, so the same names
    assert parallel.logical_axes("out/kernel", 2) == ("embed", "vocab")
    assert parallel.state_spec((16, 10), ("embed", "vocab"), sizes) == P("fsdp")        # 4 does not divide 10
    assert parallel.state_spec((7, 6), None, sizes) == P(None, "fsdp")                   # unnamed: largest axis
    assert parallel.logical_axes("rnn/layer1/cell/W_hr", 2) is None
    assert parallel.param_spec((104, 256), 4) == P(None, "fsdp")


def test_translation_transformer_is_split_megatron_style():
    """Encoder self-attention, decoder self- and cross-attention and every FFN get their tensor axes."""
    from jaxseq.models.seq2seq import TransformerEncoderDecoder
    model = TransformerEncoderDecoder(src_vocab_size=9, tgt_vocab_size=12, max_len=8, d_model=16, num_heads=4,
                                      num_layers=1, ffn=32)
    batch = {"src": np.zeros((2, 8), np.int32), "src_len": np.full((2,), 8, np.int32),
             "tgt_in": np.zeros((2, 8), np.int32), "tgt_out": np.zeros((2, 8), np.int32),
             "weights": np.ones((2, 8), np.float32)}
    params = jax.eval_shape(lambda: train.init_params(model, batch, 0))
    sizes = {"data": 1, "fsdp": 1, "tensor": 2}
    specs = {parallel._key_path(path): parallel.state_spec(leaf.shape, parallel.logical_axes(
        parallel._key_path(path), leaf.ndim), sizes) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for attention in ("encoder/block_0/attention", "decoder/block_0/self_attention", "decoder/block_0/cross_attention"):
        for name in ("query", "key", "value"):
            assert specs[f"{attention}/{name}/kernel"] == P(None, "tensor")
        assert specs[f"{attention}/out/kernel"] == P("tensor")
    for stack in ("encoder", "decoder"):
        assert specs[f"{stack}/block_0/ffn/dense1/kernel"] == P(None, "tensor")
        assert specs[f"{stack}/block_0/ffn/dense2/kernel"] == P("tensor")
    assert specs["out/kernel"] == P(None, "tensor") and specs["src_embedder/embed/embedding"] == P()   # 2 does not divide 9
    assert specs["tgt_embedder/embed/embedding"] == P("tensor")


def test_bad_tensor_flags_are_one_line():
    run = lm_task.resolve(data="x.txt", model="transformer", heads=4, ffn=512, tensor=3)
    with pytest.raises(ConfigError, match=r"^--tensor 3 does not divide --heads 4 and --ffn 512; "):
        runner.check_tensor(run)
    runner.check_tensor(lm_task.resolve(data="x.txt", model="transformer", heads=4, ffn=512, tensor=2))
    with pytest.raises(ConfigError, match=r"^--tensor 2: --model gru has no tensor-parallel axes"):
        runner.check_tensor(lm_task.resolve(data="x.txt", model="gru", tensor=2))
    with pytest.raises(ConfigError, match=r"--fsdp 2 x --tensor 4 does not divide the 4 devices"):
        parallel.make_mesh(4, fsdp=2, tensor=4)
    with pytest.raises(ConfigError, match=r"not divisible by the 2 batch groups \(4 devices / --tensor 2\)"):
        parallel.check_batch_size(3, parallel.make_mesh(4, tensor=2))
