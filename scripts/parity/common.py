"""Shared pieces of the parity checks in scripts/parity/ (see README.md there).

A parity check runs a reference implementation's model file as it is (MMRec's, or the
authors' repository) next to ours on a hand-sized graph, with our weights copied into
theirs, and prints the differences. The reference code is never part of this repository:
it is read at run time from a checkout whose root is given by ``--ref`` or an environment
variable. What lives here is ours: the stand-ins for the reference repository's own
modules (its base class, config and dataset), shims for functions current torch / scipy
dropped, the hand-sized graphs, and the comparison and report helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import subprocess
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the repository's sea/, also without an install
    sys.path.insert(0, str(ROOT))

from sea.batch import Batch  # noqa: E402
from sea.losses import RankingLoss  # noqa: E402

# ------------------------------------------------------------------ the references


@dataclass(frozen=True)
class Reference:
    name: str
    env: str  # the environment variable that names a checkout's root
    url: str
    commit: str  # the commit the figures on the doc pages were taken at


MMREC = Reference("MMRec", "SEA_PARITY_MMREC", "https://github.com/enoche/MMRec", "e775373")
COHESION = Reference("COHESION", "SEA_PARITY_COHESION", "https://github.com/Jinfeng-Xu/COHESION", "3fccdaf")
GUME = Reference("GUME", "SEA_PARITY_GUME", "https://github.com/NanGongNingYi/GUME", "44a4dce")
MENTOR = Reference("MENTOR", "SEA_PARITY_MENTOR", "https://github.com/Jinfeng-Xu/MENTOR", "1581d27")
PGL = Reference("PGL", "SEA_PARITY_PGL", "https://github.com/demonph10/PGL", "dbc871c")

#: model -> (its reference, the reference's model file relative to the checkout's root)
CHECKS: dict[str, tuple[Reference, str]] = {
    "bm3": (MMREC, "src/models/bm3.py"),
    "bprmf": (MMREC, "src/models/bpr.py"),
    "cohesion": (COHESION, "src/models/cohesion.py"),
    "damrs": (MMREC, "src/models/damrs.py"),
    "dragon": (MMREC, "src/models/dragon.py"),
    "dualgnn": (MMREC, "src/models/dualgnn.py"),
    "freedom": (MMREC, "src/models/freedom.py"),
    "grcn": (MMREC, "src/models/grcn.py"),
    "gume": (GUME, "src/models/gume.py"),
    "lattice": (MMREC, "src/models/lattice.py"),
    "layergcn": (MMREC, "src/models/layergcn.py"),
    "lgmrec": (MMREC, "src/models/lgmrec.py"),
    "lightgcn": (MMREC, "src/models/lightgcn.py"),
    "mentor": (MENTOR, "src/models/mentor.py"),
    "mgcn": (MMREC, "src/models/mgcn.py"),
    "mmgcf": (MMREC, "src/models/mmgcf.py"),
    "mmgcn": (MMREC, "src/models/mmgcn.py"),
    "mvgae": (MMREC, "src/models/mvgae.py"),
    "pgl": (PGL, "src/models/pgl.py"),
    "selfcf": (MMREC, "src/models/selfcfed_lgn.py"),
    "slmrec": (MMREC, "src/models/slmrec.py"),
    "smore": (MMREC, "src/models/smore.py"),
    "vbpr": (MMREC, "src/models/vbpr.py"),
}
#: the user-user graph preprocessing script (DRAGON's and COHESION's user graphs)
USER_GRAPH_SCRIPT = "preprocessing/dualgnn-gen-u-u-matrix.py"


class Setup:
    """What a check script gets from :func:`setup`: the checkout, the options and ``ref``,
    the reference's model module (imported as is)."""

    def __init__(self, model: str, root: Path, float64: bool) -> None:
        self.model, self.root, self.float64 = model, root, float64
        self.reference, self.file = CHECKS[model]
        self.ref: types.ModuleType | None = None

    def path(self, relative: str) -> Path:
        """A file of the checkout; exits (2) with one line when it is not there."""
        p = self.root / relative
        if not p.is_file():
            _missing(f"parity {self.model}: {self.root} has no {relative} (a checkout of {self.reference.url}?)")
        return p

    def load(self, name: str, relative: str, replace: dict[str, str] | None = None) -> types.ModuleType:
        """The checkout's file ``relative``, imported as module ``name`` (see :func:`load`)."""
        return load(name, self.path(relative), replace)

    def describe(self) -> str:
        """The reference file and the checkout's commit (when it is a git checkout)."""
        try:
            head = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            head = ""
        at = f"checkout at {head}" if head else "checkout not a git repository"
        return (
            f"sea/models/{self.model}.py vs {self.reference.name}'s {self.file} ({at}; the doc page's figures: "
            f"{self.reference.commit})"
        )


def _missing(message: str) -> NoReturn:
    """No reference to check against: one line on stderr, exit status 2 (1: a failed check)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def setup(model: str, *, float64: bool = False, preload: dict[str, str] | None = None) -> Setup:
    """Parse ``--ref`` (default: the reference's environment variable) and, where the check
    has it, ``--float64``; install the shims and the stand-ins of the reference's own
    modules (``common.*`` and the like; ``preload``: more of its files, module name ->
    path); one thread, warnings off, float32 by default; import the model file (``.ref``)."""
    ref, relative = CHECKS[model]
    parser = argparse.ArgumentParser(description=f"Parity check of sea's {model} against {ref.name}'s {relative}.")
    parser.add_argument(
        "--ref",
        default=os.environ.get(ref.env),
        metavar="PATH",
        help=f"root of a checkout of {ref.url} (commit {ref.commit}); default ${ref.env}",
    )
    if float64:
        parser.add_argument("--float64", action="store_true", help="both sides in float64, to tell rounding apart")
    args = parser.parse_args()
    if not args.ref:
        _missing(
            f"parity {model}: no reference checkout: pass --ref PATH or set {ref.env} "
            f"(a checkout of {ref.url} at {ref.commit})"
        )
    s = Setup(model, Path(args.ref).expanduser().resolve(), getattr(args, "float64", False))
    s.path(relative)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    install_shims()
    install_reference_modules(s)
    for name, path in (preload or {}).items():
        s.load(name, path)
    s.ref = s.load(f"ref_{model}", relative)
    return s


# ------------------------------------------------------------------ loading and stand-in modules


def load(name: str, path: Path, replace: dict[str, str] | None = None) -> types.ModuleType:
    """Import the file ``path`` as module ``name`` (registered in sys.modules and on its
    parent package, as a real import would). ``replace``: old -> new text substitutions
    made in memory first (each old text must occur), to run a variant of the file."""
    if replace:
        source = path.read_text()
        for old, new in replace.items():
            assert old in source, f"{path}: {old!r} not found"
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        _attach(name, module)
        exec(compile(source, str(path), "exec"), module.__dict__)
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: PyG inspects the module of message()
    _attach(name, module)
    spec.loader.exec_module(module)
    return module


def stub(name: str, **attrs) -> types.ModuleType:
    """An empty module ``name`` with ``attrs`` (a package's stand-in), registered."""
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    _attach(name, module)
    return module


def _attach(name: str, module: types.ModuleType) -> None:
    parent, _, child = name.rpartition(".")
    if parent:
        if parent not in sys.modules:
            stub(parent)
        setattr(sys.modules[parent], child, module)


class GeneralRecommender(nn.Module):
    """Stand-in for the references' ``common.abstract_recommender.GeneralRecommender``:
    the sizes, batch size and device from the config, the features from the dataset (the
    real one reads them from .npy files under the config's data path)."""

    def __init__(self, config, dataloader):
        super().__init__()
        self.n_users = dataloader.dataset.get_user_num()
        self.n_items = dataloader.dataset.get_item_num()
        self.batch_size = config.get("train_batch_size")
        self.device = config["device"]
        self.v_feat, self.t_feat = dataloader.v_feat, dataloader.t_feat


class Config(dict):
    """The references' Config: a dict whose missing keys read as None."""

    def __getitem__(self, key):
        return dict.get(self, key)


class Dataset:
    """Stand-in for the train data loader a reference model is given (and its ``dataset``):
    the sizes, the training pairs as ``inter_matrix(form)`` in the order given, the
    features (``v_feat`` image, ``t_feat`` text; either may be None)."""

    def __init__(self, n_users, n_items, users, items, v_feat=None, t_feat=None):
        self.dataset = self
        self.n_users, self.n_items = n_users, n_items
        self.users, self.items = np.asarray(users), np.asarray(items)
        self.v_feat, self.t_feat = v_feat, t_feat

    def get_user_num(self) -> int:
        return self.n_users

    def get_item_num(self) -> int:
        return self.n_items

    def inter_matrix(self, form="coo"):
        m = sp.coo_matrix((np.ones(len(self.users)), (self.users, self.items)), shape=(self.n_users, self.n_items))
        return m.asformat(form)


def install_reference_modules(s: Setup) -> None:
    """What the reference model files import from their own repository: the base class
    (our stand-in), and its small helper modules as they are in the checkout (loss.py,
    init.py, utils.py; absent ones skipped). MMRec's layergcn.py imports them as
    ``models.common.*``: aliased. (This file, imported as ``common`` by the check scripts,
    steps aside for the reference's package of that name.)"""
    if sys.modules.get("common") is sys.modules[__name__]:
        sys.modules["sea_parity_common"] = sys.modules.pop("common")
    stub("common.abstract_recommender", GeneralRecommender=GeneralRecommender)
    for name, relative in (
        ("common.loss", "src/common/loss.py"),
        ("common.init", "src/common/init.py"),
        ("utils.utils", "src/utils/utils.py"),
        ("utils_package.utils", "src/utils_package/utils.py"),
    ):
        if (s.root / relative).is_file():
            load(name, s.root / relative)
    for name in ("common", "common.abstract_recommender", "common.loss", "common.init"):
        if name in sys.modules:
            sys.modules[f"models.{name}"] = sys.modules[name]
            _attach(f"models.{name}", sys.modules[name])


# ------------------------------------------------------------------ shims


def install_shims() -> None:
    """What the reference code calls and current torch / scipy lack, or a GPU would do:
    torch.sparse.FloatTensor (a coalesced float32 sparse_coo_tensor), scipy's
    dok_matrix._update (item by item), Tensor.cuda (the identity: these checks run on the
    CPU), torch_scatter.scatter_add and torch_sparse (when not installed)."""

    def float_tensor(indices, values, size):
        return torch.sparse_coo_tensor(indices, values.to(torch.float32), tuple(size)).coalesce()

    torch.sparse.FloatTensor = float_tensor
    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self, entries):
            for key, value in entries.items():
                self[key] = value

        sp.dok_matrix._update = _update
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if importlib.util.find_spec("torch_scatter") is None:

        def scatter_add(src, index, dim=0, dim_size=None):
            assert dim == 0
            return torch.zeros(dim_size, *src.shape[1:], dtype=src.dtype).index_add(0, index, src)

        def scatter(*args, **kwargs):
            raise NotImplementedError("torch_scatter.scatter: stand-in only")

        stub("torch_scatter", scatter_add=scatter_add, scatter=scatter)
    if importlib.util.find_spec("torch_sparse") is None:
        stub("torch_sparse")


@contextlib.contextmanager
def patched(owner, name: str, value):
    """``owner.name = value`` for the duration of the block (a draw handed over, a
    function recorded)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def gcn_of_width(ref: types.ModuleType, d: int):
    """DRAGON's and DualGNN's MMRec ``GCN`` (of module ``ref``) with its hard-coded
    dim_latent=64 replaced by d (d = 64: unchanged); use as ``patched(ref, "GCN", ...)``."""
    gcn = ref.GCN

    def make(*args, **kwargs):
        kwargs["dim_latent"] = d
        with patched(ref, "GCN", gcn):  # its __init__ calls super(GCN, self)
            return gcn(*args, **kwargs)

    return make


def dense_user_graph(theirs, n_users: int) -> torch.Tensor:
    """An MMRec model's user graph of this epoch (DRAGON, DualGNN: index lists + softmax
    weights) as a dense n_users × n_users matrix."""
    g = torch.zeros(n_users, n_users)
    idx = torch.as_tensor(theirs.epoch_user_graph)
    g.index_put_((torch.arange(n_users).unsqueeze(1).expand_as(idx), idx), theirs.user_weight_matrix, accumulate=True)
    return g


def hand_our_draw(report, ours, theirs, seed: int, *, label: str = "MMRec keeps as many edges as ours"):
    """Our epoch's edge draw (FREEDOM, MMGCF, PGL's local mode), handed to the reference's
    ``pre_epoch_processing`` in place of its ``torch.multinomial`` (the same edges, by their
    positions in its edge list); checks that it asked for as many edges as we kept."""
    kept = ours.kept_edges(torch.Generator().manual_seed(seed))
    ours.on_epoch_start(1, torch.Generator().manual_seed(seed))  # the same draw
    idx = their_edge_positions(theirs.edge_indices, ours.edge_users, ours.edge_items, kept)
    calls = []

    def handed(weights, n, *args, **kwargs):
        calls.append(n)
        return idx

    with patched(torch, "multinomial", handed):
        theirs.pre_epoch_processing()
    report.check(label, calls == [len(idx)], f"{calls} vs {len(idx)}")


class _HandedNumpy:
    """numpy as a reference module sees it, except that ``np.load`` of a handed file name
    returns the handed object boxed in a 0-d object array (so the reference's ``.item()``
    unboxes it) without touching the disk; any other file loads with pickling refused."""

    def __init__(self, files: dict[str, object]):
        self._files = files

    def __getattr__(self, name: str):
        return getattr(np, name)

    def load(self, path, *args, **kwargs):
        name = os.path.basename(os.fspath(path))
        if name not in self._files:
            return np.load(path, allow_pickle=False)
        boxed = np.empty((), dtype=object)
        boxed[()] = self._files[name]
        return boxed


def handed_files(ref: types.ModuleType, files: dict[str, object]):
    """The reference's pickled ``.npy`` inputs (DRAGON's, DualGNN's, MENTOR's, COHESION's
    user-graph dict, DA-MRS's item-graph dict) handed in memory while ``ref``'s model is
    built: nothing is pickled to disk or unpickled."""
    return patched(ref, "np", _HandedNumpy(files))


def same_draw(drop, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``drop(x)`` and the mask it drew (0 or 1/(1-p) per entry): the draw made again
    from the same generator state on ones."""
    state = torch.get_rng_state()
    y = drop(x)
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    mask = drop(torch.ones_like(x))
    torch.set_rng_state(after)
    return y, mask


# ------------------------------------------------------------------ hand-sized graphs

N_USERS, N_ITEMS = 12, 10  # users, items


def sampled_pairs(rng, users, n_items, per_user, *, cover: int | None = None) -> list[tuple[int, int]]:
    """Sorted distinct (user, item) pairs: each of ``users`` gets ``rng.integers(*per_user)``
    distinct items drawn from ``range(n_items)``; ``cover``: afterwards every item below
    it that no one has goes to a random user (among the first ``len(users)``)."""
    pairs = set()
    for u in users:
        for i in rng.choice(n_items, size=rng.integers(*per_user), replace=False):
            pairs.add((int(u), int(i)))
    for i in range(cover or 0):
        if not any(p[1] == i for p in pairs):
            pairs.add((int(rng.integers(len(users))), i))
    return sorted(pairs)


def hand_graph(rng, *, denser=False) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """The usual hand-sized graph: each user 1-4 training items among items 0..8; item 9
    has none (isolated) and is every user's test item. ``denser``: 1-5 items a user, every
    item of 0..8 given one, item 9 a test and a valid item of users 0 and 1. Returns
    (pairs, rows for GraphData.build)."""
    if denser:
        pairs = sampled_pairs(rng, range(N_USERS), 9, (1, 6), cover=9)
        return pairs, [(u, i, "train") for u, i in pairs] + [(0, 9, "test"), (1, 9, "valid")]
    pairs = sampled_pairs(rng, range(N_USERS), 9, (1, 5))
    return pairs, [(u, i, "train") for u, i in pairs] + [(u, 9, "test") for u in range(N_USERS)]


def connected_pairs(rng, n_users, n_items, extra=(0, 4)) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of a connected graph (n_users >= n_items), sorted: user u has item
    u mod n_items and the next one (a ring through every item), and ``rng.integers(*extra)``
    more drawn at random."""
    pairs = set()
    for u in range(n_users):
        pairs |= {(u, u % n_items), (u, (u + 1) % n_items)}
        pairs |= {(u, int(i)) for i in rng.choice(n_items, size=rng.integers(*extra), replace=False)}
    users, items = np.array(sorted(pairs)).T
    return users, items


def user_graph_pairs(rng) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """DRAGON's and DualGNN's hand graph: users 0-10 each have item 0 and 1-5 more among
    1..7 (so each shares items with all the others), user 11 only item 8 (no user-graph
    row), item 9 none; the training pairs and the rows of ``frame`` (item 9 as everyone's test)."""
    pairs = set()
    for u in range(N_USERS - 1):
        pairs.add((u, 0))
        pairs |= {(u, int(i)) for i in rng.choice(np.arange(1, 8), size=rng.integers(1, 6), replace=False)}
    pairs.add((N_USERS - 1, 8))
    pairs = sorted(pairs)
    return pairs, [(u, i, "train") for u, i in pairs] + [(u, 9, "test") for u in range(N_USERS)]


def shuffled(rng, pairs) -> tuple[list[int], list[int]]:
    """(users, items) of ``pairs`` in a random order: the reference's interactions in
    another order than ours, so that its edge list differs from ours."""
    order = rng.permutation(len(pairs))
    return [pairs[k][0] for k in order], [pairs[k][1] for k in order]


def matrix_pairs(g, density, *, drawn_users=N_USERS, last_user_items=None) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of a U x I matrix with each entry set with probability ``density``;
    each of the first ``drawn_users`` users also gets one random item; the last item has
    no training edge; user 0 has item 2 only; the last user has ``last_user_items`` only
    (when given). Sorted by (user, item)."""
    a = g.random((N_USERS, N_ITEMS)) < density
    a[np.arange(drawn_users), g.integers(0, N_ITEMS, drawn_users)] = True
    a[:, N_ITEMS - 1] = False
    a[0, :] = False
    a[0, 2] = True
    if last_user_items is not None:
        a[N_USERS - 1, :] = False
        a[N_USERS - 1, list(last_user_items)] = True
    return np.nonzero(a)


def features(rng, n_items=N_ITEMS, widths=(("image", 7), ("text", 5))) -> dict[str, np.ndarray]:
    """Random float32 item features, one matrix per modality."""
    return {m: rng.normal(size=(n_items, w)).astype(np.float32) for m, w in widths}


def frame(rows):
    """(user, item, split) rows as the frame GraphData.build reads."""
    return pd.DataFrame(rows, columns=["user", "item", "split"])


def user_graph_dict(gen_uu: types.ModuleType, users, items, n_users, *, tie_order=False) -> dict:
    """The user-user graph file of DualGNN's preprocessing (dualgnn-gen-u-u-matrix.py,
    ``gen_uu``): its gen_user_matrix, then the lines of its __main__ that keep each user's
    co-occurring users by torch.topk of the counts (at most 200). ``tie_order``: ties by
    increasing user id (ours; torch.topk leaves their order open)."""
    counts = gen_uu.gen_user_matrix(np.stack([users, items], 1).tolist(), n_users)
    out = {}
    for u in range(n_users):
        n = int(len(torch.nonzero(counts[u])))
        top = torch.topk(counts[u], min(n, 200))
        out[u] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
        if tie_order:
            pairs = sorted(zip(*out[u]), key=lambda p: (-p[1], p[0]))
            out[u] = [[p[0] for p in pairs], [p[1] for p in pairs]]
    return out


def their_edge_positions(their_edges: torch.Tensor, our_users, our_items, kept) -> torch.Tensor:
    """Our edges ``kept`` (positions in our edge list) as positions in theirs
    (``their_edges``: 2 x E of (user, item))."""
    pos = {(int(u), int(i)): k for k, (u, i) in enumerate(their_edges.T.tolist())}
    return torch.tensor([pos[(int(our_users[k]), int(our_items[k]))] for k in kept])


def sampled_batch(rng, pairs, n, n_items=N_ITEMS):
    """A Batch of n training pairs drawn from ``pairs`` (repeats when n exceeds them), one
    uniform negative each (as the references take them)."""
    pick = rng.choice(len(pairs), size=n, replace=n > len(pairs))
    users = torch.tensor([pairs[k][0] for k in pick])
    pos = torch.tensor([pairs[k][1] for k in pick])
    neg = torch.tensor(rng.integers(0, n_items, size=n))
    return Batch(users, pos, neg.unsqueeze(1))


def drawn_batch(users, items, n, seed, n_items=N_ITEMS):
    """A Batch of n training pairs (users[k], items[k]) drawn with replacement by a torch
    generator seeded ``seed``, one uniform negative each."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(users), (n,), generator=g)
    return Batch(
        torch.as_tensor(users)[pick], torch.as_tensor(items)[pick], torch.randint(n_items, (n, 1), generator=g)
    )


def repeat_batch(rng, pairs, negatives=True):
    """A Batch of 8 distinct training pairs plus a 9th repeating the first's user and the
    second's item (one uniform negative each, or zeros: read by neither side)."""
    pick = rng.choice(len(pairs), size=8, replace=False)
    users = torch.tensor([pairs[k][0] for k in pick] + [pairs[pick[0]][0]])
    pos = torch.tensor([pairs[k][1] for k in pick] + [pairs[pick[1]][1]])
    neg = torch.tensor(rng.integers(0, N_ITEMS, size=9)) if negatives else torch.zeros(9, dtype=torch.long)
    return Batch(users, pos, neg.unsqueeze(1))


# ------------------------------------------------------------------ our side


def copy_weights(ours: nn.Module, theirs: nn.Module, mapping: dict[str, str]) -> list[str]:
    """Our parameter -> theirs (names), every parameter of ours mapped; copied (reshaped to
    theirs). Returns their parameters without a counterpart, sorted."""
    ours_p, their_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert set(mapping) == set(ours_p), f"ours unmapped or unknown: {set(ours_p) ^ set(mapping)}"
    with torch.no_grad():
        for o, t in mapping.items():
            assert their_p[t].numel() == ours_p[o].numel(), (o, t)
            their_p[t].copy_(ours_p[o].reshape(their_p[t].shape))
    return sorted(set(their_p) - set(mapping.values()))


def mmrec_mapping(*, bias=True) -> dict[str, str]:
    """Our parameter -> MMRec's, for what most of MMRec's multimodal models share: the
    user and item tables (user_embedding, item_id_embedding) and each modality's
    projection (image_trs, text_trs; ``bias``: with their biases)."""
    mapping = {"user.weight": "user_embedding.weight", "item.weight": "item_id_embedding.weight"}
    for m in ("image", "text"):
        mapping |= {f"projections.{m}.{p}": f"{m}_trs.{p}" for p in ("weight", "bias")[: 2 if bias else 1]}
    return mapping


def our_loss(model, data, batch, ranking: str | None = "bpr"):
    """Our training loss as sea.train.train_step composes it: the ranking loss (unless
    None) plus Σ weight·term of the model's own terms. Returns (total, {term: value})."""
    emb = model(data)
    terms = {"bpr": RankingLoss(ranking)(emb, batch)} if ranking else {}
    extra = model.extra_losses(emb, batch)
    terms |= {k: t.value for k, t in extra.items()}
    total = sum(extra[k].weight * v if k in extra else v for k, v in terms.items())
    return total, terms


def compare_forward(report, ours, data, theirs, *args, forward=None, **kwargs):
    """Eval mode, no gradient: our user / item vectors and full score matrix against the
    (users, items) of their ``forward(*args, **kwargs)`` (default: theirs.forward) and their
    full_sort_predict. Returns our output."""
    ours.eval(), theirs.eval()
    users = torch.arange(data.n_users)
    with torch.no_grad():
        emb = ours(data)
        scores = ours.score(emb, users)
        tu, ti = (forward or theirs.forward)(*args, **kwargs)[:2]
        their_scores = theirs.full_sort_predict([users])
    report.compare("eval: user vectors", emb.user, tu)
    report.compare("eval: item vectors", emb.item, ti)
    report.compare("eval: score matrix", scores, their_scores)
    return emb


def compare_grads(report, ours, theirs, mapping, *, scale=1.0, label="grad ", slack=1.0, to_ours=None):
    """Each mapped parameter's gradient, ours x ``scale`` against theirs (``to_ours``:
    their name -> a function bringing their gradient to our layout; ``slack``: one for all,
    or per our parameter name, 1 for those it does not name)."""
    ours_p, their_p = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for o, t in mapping.items():
        g = their_p[t].grad
        g = torch.zeros_like(their_p[t]) if g is None else g
        g = (to_ours or {}).get(t, lambda x: x)(g)
        mine = ours_p[o].grad
        mine = torch.zeros_like(ours_p[o]) if mine is None else mine
        report.compare(f"{label}{o}", mine * scale, g, slack=slack.get(o, 1.0) if isinstance(slack, dict) else slack)


def compare_step(
    report, ours, theirs, data, batch, mapping, *, label="", ranking="bpr", scale=1.0, slack=1.0, to_ours=None
):
    """One training batch on both sides (train mode; no random draw on either): our loss
    (:func:`our_loss`) x ``scale`` against their calculate_loss on (users, positives,
    the first negatives), then the mapped gradients. Returns (our total, theirs)."""
    ours.train(), theirs.train()
    ours.zero_grad(), theirs.zero_grad()
    total, _ = our_loss(ours, data, batch, ranking)
    total.backward()
    their_total = theirs.calculate_loss([batch.users, batch.pos, batch.neg[:, 0]])
    their_total.backward()
    report.compare(f"{label}loss", total * scale, their_total, slack=1.0 if isinstance(slack, dict) else slack)
    compare_grads(report, ours, theirs, mapping, scale=scale, label=f"{label}grad ", slack=slack, to_ours=to_ours)
    return total, their_total


# ------------------------------------------------------------------ comparing and reporting


def diff(ours, theirs, *, elementwise: bool = False) -> tuple[float, float, float]:
    """(max |ours - theirs|, relative, max |theirs|). Relative: that max over max |theirs|;
    ``elementwise``: the largest |ours - theirs| / |theirs| over the entries of theirs at
    least 1% of its largest (smaller ones measure only rounding). NaN counts as inf."""
    a = torch.as_tensor(ours).detach().double()
    b = torch.as_tensor(theirs).detach().double()
    assert a.numel() == b.numel(), (a.shape, b.shape)
    a = a.reshape(b.shape)
    d = (a - b).abs()
    ab = d.max().item() if d.numel() else 0.0
    if math.isnan(ab):
        return math.inf, math.inf, b.abs().max().item()
    ref = b.abs().max().item() if b.numel() else 0.0
    if elementwise:
        big = b.abs() >= 1e-2 * ref
        rel = (d[big] / b.abs()[big]).max().item() if ref > 0 and big.any() else (0.0 if ab == 0 else math.inf)
    else:
        rel = ab / ref if ref > 0 else (0.0 if ab == 0 else math.inf)
    return ab, rel, ref


class Report:
    """The figures of one check: a row per comparison (printed unless ``quiet``), the worst
    per quantity over the settings at the end, and the verdict: :meth:`finish` exits 1
    with one line when a figure exceeds its tolerance.

    Tolerance: a figure passes when its relative difference is at most ``rtol`` (1e-5 in
    float32, ``rtol64`` in float64; ten times that for differences per entry) times the
    quantity's ``slack``, or, where a quantity has an absolute tolerance ``atol``, its
    max |difference| at most that."""

    def __init__(
        self, s: Setup, details: str, *, elementwise: bool = False, quiet: bool = False, rtol64: float = 1e-12
    ):
        float64 = s.float64
        self.rtol32 = 1e-5 * (10 if elementwise else 1)  # per entry: 10x
        self.rtol = rtol64 * (10 if elementwise else 1) if float64 else self.rtol32
        self.elementwise, self.quiet, self.model = elementwise, quiet, s.model
        self.worst: dict[str, list] = {}  # name -> [abs, rel, |ref|, tolerance]
        self.failures: list[str] = []
        self.n_checked = 0
        print(f"parity {s.model}: {s.describe()}")
        print(details)
        print(
            f"dtype {'float64' if float64 else 'float32'}; relative difference: "
            + ("per entry, over entries >= 1% of max |theirs|" if elementwise else "max |ours - theirs| / max |theirs|")
            + f"; tolerance rtol {self.rtol:.0e} x the quantity's slack"
        )

    def section(self, title: str) -> None:
        if not self.quiet:
            print(f"\n== {title}")

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"  {text}")

    def compare(
        self, name: str, ours, theirs, *, slack: float = 1.0, info: bool = False, float32: bool = False
    ) -> tuple[float, float]:
        """Compare ours with theirs; ``info``: a deliberate difference, printed, not checked;
        ``float32``: computed in float32 on both sides in any run (float32 tolerance)."""
        ab, rel, ref = diff(ours, theirs, elementwise=self.elementwise)
        if float32:
            slack *= self.rtol32 / self.rtol
        self.record(name, ab, rel, ref, slack=slack, info=info)
        return ab, rel

    def record(self, name, ab, rel=math.nan, ref=math.nan, *, slack=1.0, atol=None, info=False) -> None:
        """A figure computed elsewhere (``atol``: checked on max |difference| instead)."""
        if info:
            ok, tol = True, "info"
        elif atol is not None:
            ok, tol = ab <= atol, f"atol {atol:.0e}"
        else:
            ok, tol = rel <= self.rtol * slack, f"rtol {self.rtol * slack:.0e}"
        self.n_checked += not info
        if not ok:
            self.failures.append(f"{name}: abs {ab:.2e} rel {rel:.2e} exceeds {tol}")
        if not self.quiet or not ok:
            flag = "" if ok else "  <-- EXCEEDS"
            print(f"  {name:<50} abs {ab:9.2e}  rel {_e(rel)}  |ref| {_e(ref)}  {tol}{flag}")
        w = self.worst.setdefault(name, [ab, rel, ref, tol])
        w[0], w[1], w[2] = (max(a, b) if not math.isnan(b) else a for a, b in zip(w[:3], (ab, rel, ref)))

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """An exact fact (the same edges, the same kept entries): a failure when not ok."""
        self.n_checked += 1
        if not ok:
            self.failures.append(f"{name}: {detail or 'false'}")
        if not self.quiet or not ok:
            print(f"  {name}: {detail or ok}{'' if ok else '  <-- FAILS'}")

    def finish(self) -> None:
        """Print the worst figure per quantity and the verdict; exit 1 on a failure."""
        print(f"\nWorst per quantity{' over the settings' if not self.quiet else ''}:")
        print(f"  {'quantity':<50} {'max abs':>9}  {'max rel':>9}  {'max |ref|':>9}  tolerance")
        for name, (ab, rel, ref, tol) in self.worst.items():
            print(f"  {name:<50} {ab:9.2e}  {_e(rel)}  {_e(ref)}  {tol}")
        if self.failures:
            more = f" (and {len(self.failures) - 1} more above)" if len(self.failures) > 1 else ""
            print(f"\nPARITY FAILED {self.model}: {self.failures[0]}{more}")
            sys.exit(1)
        print(f"\nparity ok {self.model}: {self.n_checked} figures within tolerance")


def _e(x: float) -> str:
    return f"{'-':>9}" if math.isnan(x) else f"{x:9.2e}"
