"""Module, Parameter and containers: registration, names, state_dict, modes, devices."""
import copy
from collections import OrderedDict

import numpy as np
import pytest

from minivit import backend, nn
from minivit.autograd import Tensor
from tests.conftest import torch_or_skip


# --------------------------------------------------------------------------- a timm-shaped toy model
class Attn(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(q * k + v)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attn(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(x)


class Toy(nn.Module):
    def __init__(self, dim=4, depth=2, classes=3):
        super().__init__()
        self.cls_token = nn.Parameter(np.zeros((1, 1, dim), dtype=np.float32))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.bn = nn.BatchNorm2d(dim)
        self.register_buffer("index", np.arange(6, dtype=np.int64).reshape(2, 3))
        self.register_buffer("scratch", np.ones(2, dtype=np.float32), persistent=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # (B, N, C)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(dim=1))


def torch_toy(torch, dim=4, depth=2, classes=3):
    """The same structure in PyTorch, to compare names and order with."""
    tnn = torch.nn

    class TAttn(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = tnn.Linear(dim, 3 * dim)
            self.proj = tnn.Linear(dim, dim)

    class TBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = tnn.LayerNorm(dim)
            self.attn = TAttn()
            self.mlp = tnn.Sequential(tnn.Linear(dim, 2 * dim), tnn.GELU(), tnn.Linear(2 * dim, dim))

    class TToy(tnn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = tnn.Parameter(torch.zeros(1, 1, dim))
            self.blocks = tnn.ModuleList([TBlock() for _ in range(depth)])
            self.bn = tnn.BatchNorm2d(dim)
            self.register_buffer("index", torch.arange(6).reshape(2, 3))
            self.register_buffer("scratch", torch.ones(2), persistent=False)
            self.head = tnn.Linear(dim, classes)

    return TToy()


# --------------------------------------------------------------------------- Parameter
def test_parameter_is_a_tensor_that_requires_grad():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and p.dtype == np.float32
    assert repr(p).startswith("Parameter containing:")
    assert not nn.Parameter(np.ones(3), requires_grad=False).requires_grad


# --------------------------------------------------------------------------- registration and names
def test_names_and_order_match_pytorch():
    torch = torch_or_skip()
    ours, theirs = Toy(), torch_toy(torch)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
           [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "blocks.1.attn.qkv.weight" in ours.state_dict()
    assert "scratch" not in ours.state_dict()  # non-persistent
    assert [n for n, _ in ours.named_parameters(prefix="model", recurse=False)] == \
           [n for n, _ in theirs.named_parameters(prefix="model", recurse=False)] == ["model.cls_token"]


def test_registration_by_assignment_and_its_errors():
    m = nn.Module()
    m.w = nn.Parameter(np.zeros(2))
    m.sub = nn.Linear(2, 2)
    m.register_buffer("stat", np.zeros(2))
    m.plain = 3
    assert [n for n, _ in m.named_parameters()] == ["w", "sub.weight", "sub.bias"]
    assert [n for n, _ in m.named_buffers()] == ["stat"]
    assert isinstance(m.stat, Tensor) and not m.stat.requires_grad
    assert list(m.children()) == [m.sub] and m.plain == 3
    with pytest.raises(TypeError, match="nn.Parameter"):
        m.w = Tensor(np.zeros(2))            # a plain Tensor cannot silently replace a Parameter
    m.w = None                               # a declared-but-absent parameter, like bias=False
    assert [n for n, _ in m.named_parameters()] == ["sub.weight", "sub.bias"]
    m.stat = np.ones(2)                      # buffers may be reassigned (kept as Tensors)
    assert isinstance(m.stat, Tensor) and m.stat.data.sum() == 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope
    del m.sub
    assert list(m.children()) == []

    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1))
    with pytest.raises(AttributeError, match="super"):
        Forgot()


def test_shared_parameter_listed_once_but_saved_under_both_names():
    torch = torch_or_skip()
    a = nn.Linear(3, 3)
    m = nn.Sequential(a, a)
    t = torch.nn.Linear(3, 3)
    tm = torch.nn.Sequential(t, t)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()] == ["0.weight", "0.bias"]
    assert list(m.state_dict()) == list(tm.state_dict())
    assert m.num_parameters() == 12


def test_containers_index_slice_append():
    a, b, c = nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)
    ml = nn.ModuleList([a, b])
    ml.append(c)
    assert len(ml) == 3 and list(ml) == [a, b, c] and ml[-1] is c
    assert [n for n, _ in ml.named_children()] == ["0", "1", "2"]
    assert list(ml[1:]) == [b, c] and isinstance(ml[1:], nn.ModuleList)
    with pytest.raises(IndexError, match="out of range"):
        ml[3]
    seq = nn.Sequential(OrderedDict(fc=a, act=b))
    assert seq[0] is a and seq[-1] is b and [n for n, _ in seq[1:].named_children()] == ["act"]
    seq[1] = nn.Identity()
    assert isinstance(seq.act, nn.Identity)
    assert nn.Sequential(a, b, c).get_submodule("2") is c


def test_sequential_and_identity_forward(xp, device):
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Identity(), nn.Linear(4, 2)).to(device=device)
    x = Tensor(xp.asarray(np.random.randn(5, 3).astype(np.float32)))
    expected = m[3](m[1](m[0](x)))
    assert xp.array_equal(m(x).data, expected.data)
    assert nn.Identity(7, foo=1)(x) is x


def test_repr_matches_pytorch():
    torch = torch_or_skip()
    tnn = torch.nn
    ours = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 4), nn.GELU(), nn.Dropout(0.1),
                         nn.Softmax(dim=-1), nn.Identity())
    theirs = tnn.Sequential(tnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), tnn.BatchNorm2d(8),
                            tnn.ReLU(), tnn.Flatten(), tnn.LayerNorm(8), tnn.Linear(8, 4), tnn.GELU(),
                            tnn.Dropout(0.1), tnn.Softmax(dim=-1), tnn.Identity())
    # torch < 2.13 leaves the norms' bias flag out of the repr: compare without it
    assert repr(ours).replace(", bias=True", "") == repr(theirs).replace(", bias=True", "")
    assert repr(nn.LayerNorm(8)) == "LayerNorm((8,), eps=1e-05, elementwise_affine=True, bias=True)"
    assert repr(Block(4)).startswith("Block(\n  (norm1): LayerNorm((4,), eps=1e-05, elementwise_affine=True, "
                                     "bias=True)\n"
                                     "  (attn): Attn(\n    (qkv): Linear(in_features=4, out_features=12, bias=True)")


# --------------------------------------------------------------------------- state_dict
def test_state_dict_is_a_copy_on_the_modules_device(xp, device):
    m = Toy().to(device=device)
    sd = m.state_dict()
    assert all(isinstance(v, xp.ndarray) for v in sd.values())
    before = backend.to_numpy(sd["head.weight"]).copy()
    m.head.weight.data += 1                  # training goes on...
    assert np.array_equal(backend.to_numpy(sd["head.weight"]), before)  # ...the saved dict does not move
    assert sd["index"].dtype == np.int64


def test_state_dict_round_trip(xp, device):
    a, b = Toy().to(device=device), Toy().to(device=device)
    x = Tensor(xp.asarray(np.random.randn(2, 5, 4).astype(np.float32)))
    assert not xp.allclose(a(x).data, b(x).data)
    keep = list(b.parameters())
    host = {k: backend.to_numpy(v) for k, v in a.state_dict().items()}  # as saved to disk
    assert b.load_state_dict(host) == ([], [])
    assert xp.array_equal(a(x).data, b(x).data)
    assert all(p is q for p, q in zip(keep, b.parameters()))            # identity kept
    assert all(p.device == device and p.dtype == np.float32 for p in b.parameters())
    host["head.bias"][...] = 42                                        # no aliasing with the source
    assert not (b.head.bias.data == 42).any()


def test_load_state_dict_accepts_tensors_lists_and_casts(xp, device):
    m = nn.Linear(2, 2).to(device=device, dtype=np.float64)
    m.load_state_dict({"weight": Tensor(np.eye(2, dtype=np.float32)), "bias": [1, 2]})
    assert m.weight.dtype == np.float64 and m.weight.device == device
    assert np.array_equal(backend.to_numpy(m.weight.data), np.eye(2))
    assert np.array_equal(backend.to_numpy(m.bias.data), [1.0, 2.0])


def test_load_state_dict_reports_every_problem_and_changes_nothing():
    m = Toy()
    sd = m.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    bad = dict(sd)
    del bad["head.bias"], bad["blocks.0.norm1.weight"]
    bad["extra.weight"] = np.zeros(1)
    bad["head.weight"] = np.zeros((10, 4))
    bad["cls_token"] = np.zeros((1, 2, 4))
    bad["blocks.1.attn.proj.bias"] = np.full(4, 7.0)  # a good entry: must not be copied either
    with pytest.raises(RuntimeError) as e:
        m.load_state_dict(bad)
    msg = str(e.value)
    for piece in ["Toy", "Missing key(s) (2)", "'head.bias'", "'blocks.0.norm1.weight'",
                  "Unexpected key(s) (1)", "'extra.weight'", "Size mismatch (2)",
                  "'head.weight': checkpoint has shape (10, 4), model has shape (3, 4)",
                  "'cls_token': checkpoint has shape (1, 2, 4), model has shape (1, 1, 4)"]:
        assert piece in msg, (piece, msg)
    assert all(np.array_equal(v, before[k]) for k, v in m.state_dict().items())


def test_load_state_dict_non_strict_returns_keys_but_shapes_still_raise():
    m = Toy()
    sd = m.state_dict()
    sd.pop("head.bias")
    sd["extra"] = np.zeros(1)
    sd["head.weight"] = np.full((3, 4), 0.5, dtype=np.float32)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert (missing, unexpected) == (["head.bias"], ["extra"])
    assert (m.head.weight.data == 0.5).all()
    sd["head.weight"] = np.zeros((1, 4))
    with pytest.raises(RuntimeError, match="Size mismatch"):
        m.load_state_dict(sd, strict=False)


def test_load_pytorch_state_dict_of_same_structure():
    torch = torch_or_skip()
    theirs = torch_toy(torch)
    with torch.no_grad():
        theirs.bn.running_mean.uniform_()
        theirs.bn.num_batches_tracked += 5
    m = Toy()
    m.load_state_dict(theirs.state_dict())   # torch tensors straight in (duck-typed)
    for name, t in theirs.state_dict().items():
        ours = m.state_dict()[name]
        assert ours.dtype == t.numpy().dtype and np.array_equal(ours, t.numpy()), name


# --------------------------------------------------------------------------- modes, grads, apply
def test_train_eval_propagate():
    m = Toy()
    assert all(mod.training for mod in m.modules())
    assert m.eval() is m and not any(mod.training for mod in m.modules())
    m.blocks.train()
    assert m.blocks[1].mlp[2].training and not m.head.training and not m.training
    with pytest.raises(ValueError, match="bool"):
        m.train("no")


def test_zero_grad_and_requires_grad(xp, device):
    m = Toy().to(device=device)
    x = Tensor(xp.asarray(np.random.randn(2, 5, 4).astype(np.float32)))
    m(x).sum().backward()
    used = list(m.blocks.parameters()) + list(m.head.parameters())   # cls_token and bn are unused
    assert all(p.grad is not None for p in used)
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_apply_visits_children_before_parents():
    m = Toy()
    order = []
    m.apply(lambda mod: order.append(mod))
    assert order[-1] is m and order.index(m.blocks[0].attn.qkv) < order.index(m.blocks[0].attn)
    assert len(order) == len(list(m.modules()))

    def init(mod):
        if isinstance(mod, nn.Linear):
            nn.init.zeros_(mod.weight)
    m.apply(init)
    assert all((mod.weight.data == 0).all() for mod in m.modules() if isinstance(mod, nn.Linear))


# --------------------------------------------------------------------------- to()
def test_to_keeps_identity_and_integer_buffers(xp, device):
    m = Toy()
    m.head.weight.grad = np.ones((3, 4), dtype=np.float32)
    params = list(m.parameters())            # what an optimizer would hold
    assert m.to(device=device, dtype=np.float64) is m
    assert all(p is q for p, q in zip(params, m.parameters()))
    assert all(p.dtype == np.float64 and p.device == device for p in params)
    assert m.head.weight.grad.dtype == np.float64 and backend.device_of(m.head.weight.grad) == device
    assert m.bn.running_var.dtype == np.float64 and m.scratch.dtype == np.float64
    assert m.index.dtype == np.int64 and m.bn.num_batches_tracked.dtype == np.int64
    assert m.index.device == device
    m.to(np.float32)                         # positional dtype, as torch's module.to(torch.float32)
    assert m.head.weight.dtype == np.float32 and m.head.weight.device == device
    with pytest.raises(TypeError, match="floating"):
        m.to(dtype=np.int32)
    with pytest.raises(ValueError, match="unknown device"):
        m.to(device="tpu")


def test_deepcopy_gives_independent_parameters():
    m = Toy()
    m2 = copy.deepcopy(m)
    assert isinstance(m2.head.weight, nn.Parameter) and m2.head.weight is not m.head.weight
    m2.head.weight.data[...] = 0
    assert not (m.head.weight.data == 0).all()


def test_old_checkpoints_without_num_batches_tracked_load():
    """As PyTorch: a BatchNorm checkpoint from before num_batches_tracked existed still loads."""
    m = Toy()
    m.bn.num_batches_tracked.data[...] = 7
    sd = m.state_dict()
    del sd["bn.num_batches_tracked"]
    assert m.load_state_dict(sd) == ([], [])
    assert m.bn.num_batches_tracked.item() == 7
    del sd["bn.running_var"]
    with pytest.raises(RuntimeError, match="Missing key.*'bn.running_var'"):
        m.load_state_dict(sd)
