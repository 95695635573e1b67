"""hessjax.distributed on the 4 virtual CPU devices that conftest sets up: with params
replicated and microbatched data sharded on the batch axis, the jitted curvature products and
eigsh equal the single-device ones. Runs in JAX's default float32: the sharded run sums each
microbatch's per-example terms in another order (per device, then across devices), so results
agree to float32 round-off of a mean over 32 examples, a few eps · 32 ~ 1e-5 relative."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from hessjax import distributed
from hessjax.curvature import (
    MeanLoss,
    cross_entropy,
    hessian_operator,
    layer_block_diagonal,
    partition_by_layer,
)
from hessjax.linalg import block_eigsh, eigsh

MODEL = nn.Sequential([nn.Dense(8), jnp.tanh, nn.Dense(3)])


@pytest.fixture(scope="module")
def problem():
    assert len(jax.devices()) == 4, "conftest forces 4 host devices"
    x = jax.random.normal(jax.random.key(0), (2, 32, 5))  # 2 microbatches of 32
    y = jax.random.randint(jax.random.key(1), (2, 32), 0, 3)
    params = MODEL.init(jax.random.key(2), x[0])
    return MeanLoss(MODEL.apply, cross_entropy), params, (x, y)


def test_placement_shards_the_batch_axis_and_replicates_params(problem):
    _, params, data = problem
    mesh = distributed.data_mesh()
    assert mesh.shape == {"data": 4}
    x, y = distributed.shard_microbatches(data, mesh)
    assert x.sharding == NamedSharding(mesh, PartitionSpec(None, "data"))
    assert {s.data.shape for s in x.addressable_shards} == {(2, 8, 5)}  # 32 / 4 per device
    assert len(y.addressable_shards) == 4
    rep = distributed.replicate(params, mesh)
    for leaf in jax.tree_util.tree_leaves(rep):
        assert leaf.sharding.is_fully_replicated and len(leaf.addressable_shards) == 4
    np.testing.assert_array_equal(x, data[0])  # placement moves, never changes, the data


def test_sharded_hessian_products_and_eigsh_equal_single_device(problem):
    loss_fn, params, data = problem
    op = hessian_operator(loss_fn, params, data)
    mesh = distributed.data_mesh(4)
    sharded = hessian_operator(
        loss_fn, distributed.replicate(params, mesh), distributed.shard_microbatches(data, mesh)
    )
    v = jax.random.normal(jax.random.key(3), (op.size,))
    want, got = op.matvec(v), sharded.matvec(v)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
    # the two device counts in one mesh: 2 devices give the same products as well
    two = distributed.data_mesh(2)
    half = hessian_operator(
        loss_fn, distributed.replicate(params, two), distributed.shard_microbatches(data, two)
    )
    np.testing.assert_allclose(
        half.matvec(v), want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max())
    )
    top, top_sharded = (eigsh(o, 3, key=jax.random.key(4)) for o in (op, sharded))
    np.testing.assert_allclose(top_sharded.eigenvalues, top.eigenvalues, rtol=1e-4)


def test_block_eigsh_on_sharded_data_equals_single_device(problem):
    """It hung: the per-block eigh of its convergence test, batched by vmap, was split over
    the mesh and the devices disagreed on when to stop the loop."""
    loss_fn, params, data = problem
    mesh = distributed.data_mesh(4)
    ops = [
        hessian_operator(loss_fn, params, data),
        hessian_operator(
            loss_fn, distributed.replicate(params, mesh), distributed.shard_microbatches(data, mesh)
        ),
    ]
    part = partition_by_layer(ops[0].layout)
    want, got = (
        block_eigsh(o, part, 1, key=jax.random.key(5), block_diagonal=layer_block_diagonal(o, part))
        for o in ops
    )
    assert want.converged.all() and got.converged.all()
    np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-4)


def test_placement_checks_inputs(problem):
    _, _, data = problem
    with pytest.raises(ValueError, match="num_devices"):
        distributed.data_mesh(5)
    with pytest.raises(ValueError, match="divisible by 4"):
        distributed.shard_microbatches((jnp.ones((2, 6, 5)),), distributed.data_mesh(4))
    with pytest.raises(ValueError, match=r"\(m, b, \.\.\.\)"):
        distributed.shard_microbatches(jnp.ones(8), distributed.data_mesh(4))


def test_mesh_specs_and_fsdp_placement(problem):
    loss_fn, params, data = problem
    assert distributed.parse_mesh(None) is None and distributed.parse_mesh("") is None
    assert distributed.parse_mesh("data:4").shape == {"data": 4}
    assert distributed.parse_mesh("fsdp:2,data").shape == {"fsdp": 2, "data": 2}
    assert distributed.model_data_mesh(2, 2).axis_names == ("fsdp", "data")
    for bad in ("data:5", "fsdp:2,fsdp:2", "data:x", "fsdp,data", "fsdp:3,data"):
        with pytest.raises(ValueError):
            distributed.parse_mesh(bad)
    assert distributed.param_spec((5, 8), 4) == PartitionSpec(None, "fsdp")
    assert distributed.param_spec((8, 4), 4) == PartitionSpec("fsdp", None)
    assert distributed.param_spec((3,), 4) == PartitionSpec()
    placed = distributed.place("fsdp:4", params, data)
    kernel = placed.params["params"]["layers_0"]["kernel"]  # (5, 8): split along the 8
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp")
    assert {s.data.shape for s in kernel.addressable_shards} == {(5, 2)}
    assert placed.data[0].sharding.spec == PartitionSpec(None, "fsdp")
    op = placed.operator(hessian_operator(loss_fn, placed.params, placed.data))
    one = hessian_operator(loss_fn, params, data)
    assert op.size == one.size == 75 and op.size % 4  # uneven: vectors left whole
    np.testing.assert_allclose(
        eigsh(op, 3, key=jax.random.key(4)).eigenvalues,
        eigsh(one, 3, key=jax.random.key(4)).eigenvalues,
        rtol=1e-4,
    )
    same = distributed.place(None, params, data)
    assert same.mesh is None and same.params is params and same.operator(one) is one
