"""RemoteOptimizer: the server-side optimizers of remote tables, seen as a
``torch.optim.Optimizer`` so that learning-rate schedulers drive them.

The server steps remote rows during ``backward()`` with each table's own
optimizer; nothing is left for ``step()`` to do. What a trainer still
wants from an optimizer object is its ``param_groups``: schedulers
(StepLR, LambdaLR, CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau...)
write ``group["lr"]`` (OneCycleLR also ``group["betas"]``), and those
writes must reach the server before the next backward. So a group here is
a dict whose hyperparameter items (``lr``, ``betas``, ``eps``,
``weight_decay``) are sent with ``Client.update_optimizer`` to every
table of the group the moment they change; ``step()`` and ``zero_grad()``
are no-ops (``step(closure)`` calls the closure). The usual loop works
unchanged and with the usual timing (the lr a scheduler sets after step k
trains step k+1)::

    opt = RemoteOptimizer(model.sparse, lr=0.01)   # a module or tables
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    for batch in data:
        loss = model(batch); loss.backward()        # the server steps
        dense_opt.step(); opt.step(); sched.step()  # lr -> the server
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .client import Client
from .errors import InvalidArgument

#: group key -> the update_optimizer arguments it sets.
HYPER = ("lr", "betas", "eps", "weight_decay")

Target = Tuple[Client, str]


def _kwargs(key: str, value: Any) -> Dict[str, float]:
    if key == "betas":
        b = tuple(value)
        if len(b) != 2:
            raise InvalidArgument(f"betas: expected two values, got {value!r}")
        return {"beta1": float(b[0]), "beta2": float(b[1])}
    return {key: float(value)}


class _Group(dict):
    """A param group that sends its hyperparameters when they change."""

    def __init__(self, targets: List[Target], items: Dict[str, Any]) -> None:
        super().__init__(items)
        self.targets = targets  # (client, table) of every table of the group

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "betas":
            value = tuple(value)
        if key in HYPER and (key not in self or self[key] != value):
            kw = _kwargs(key, value)
            for client, table in self.targets:
                client.update_optimizer(table, **kw)
        super().__setitem__(key, value)

    def __reduce__(self):
        # Pickled as a plain dict; RemoteOptimizer.__setstate__ rewraps it.
        return (dict, (dict(self),))


def _targets_of(obj: Any, client: Optional[Client]) -> List[Target]:
    """(client, table) pairs of a remote module, an nn.Module holding
    some, a (client, table) pair, a table name (with ``client``) or an
    iterable of those."""
    from ._torch_core import RemoteModule
    if isinstance(obj, RemoteModule):
        return [(obj.client, t) for t in obj.tables]
    if isinstance(obj, nn.Module):
        out: List[Target] = []
        for m in obj.modules():
            if isinstance(m, RemoteModule):
                out.extend((m.client, t) for t in m.tables)
        return out
    if isinstance(obj, str):
        if client is None:
            raise InvalidArgument(f"table {obj!r}: give client= with names")
        return [(client, obj)]
    if (isinstance(obj, tuple) and len(obj) == 2 and
            isinstance(obj[0], Client) and isinstance(obj[1], str)):
        return [obj]
    if isinstance(obj, torch.Tensor):
        raise InvalidArgument("RemoteOptimizer takes remote modules or "
                              "tables, not tensors: give the local "
                              "parameters to a local optimizer")
    try:
        items = list(obj)
    except TypeError:
        raise InvalidArgument(f"not a remote module or table: {obj!r}")
    out = []
    for x in items:
        out.extend(_targets_of(x, client))
    return out


class RemoteOptimizer(torch.optim.Optimizer):
    """The hyperparameters of remote tables as an optimizer's param groups.

    Args:
        params: a remote module (or any nn.Module: its remote modules), a
            table name (with ``client``), a ``(client, table)`` pair, an
            iterable of those, or a list of dicts, one per group, each
            with ``"params"`` (as above) and optional hyperparameters.
        lr, betas, eps, weight_decay: the defaults of every group. A
            value given is sent to the group's tables now; None keeps what
            the server has (all tables of a group must agree on it).
        client: the client for tables given by name.

    Each group holds ``params`` (empty: nothing local), ``tables`` (the
    names) and the four hyperparameters. Setting one of them sends it to
    the group's tables at once (``Client.update_optimizer``; betas and eps
    matter to Adam, eps to Adagrad). ``state_dict()`` / ``load_state_dict``
    carry the hyperparameters (loading sends them); pickling keeps the
    clients (they connect again at their first call).
    """

    def __init__(self, params: Any, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None,
                 eps: Optional[float] = None,
                 weight_decay: Optional[float] = None, *,
                 client: Optional[Client] = None) -> None:
        # torch.optim.Optimizer.__init__ wants local tensors: not called.
        self.defaults = {"lr": lr, "betas": betas, "eps": eps,
                         "weight_decay": weight_decay}
        self.state: Dict[Any, Any] = defaultdict(dict)
        self.param_groups: List[Dict[str, Any]] = []
        self._client = client
        groups = params if isinstance(params, list) and params and all(
            isinstance(g, dict) for g in params) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a group (see the class docs); sends its given values."""
        if "params" not in param_group:
            raise InvalidArgument("a param group needs 'params'")
        targets = list(dict.fromkeys(
            _targets_of(param_group["params"], self._client)))
        if not targets:
            raise InvalidArgument("RemoteOptimizer: no remote table in "
                                  "the group")
        taken = {t for g in self.param_groups for t in g.targets}
        if any(t in taken for t in targets):
            raise InvalidArgument("a table is in two param groups")
        extra = {k: v for k, v in param_group.items()
                 if k not in HYPER and k != "params"}
        group = _Group(targets, dict(extra, params=[],
                                     tables=[t for _, t in targets]))
        for key in HYPER:
            value = param_group.get(key, self.defaults[key])
            if value is None:
                dict.__setitem__(group, key, self._server_value(targets, key))
            else:
                group[key] = value  # sends it
        self.param_groups.append(group)

    @staticmethod
    def _server_value(targets: List[Target], key: str) -> Any:
        values = set()
        for client, table in targets:
            cfg = client.describe_table(table).config
            values.add((cfg.beta1, cfg.beta2) if key == "betas"
                       else getattr(cfg, key))
        if len(values) != 1:
            raise InvalidArgument(
                f"the tables of a group have different {key} "
                f"({sorted(values)}); give {key}= to set one")
        return values.pop()

    # -- the optimizer protocol --

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Nothing to step (the server stepped during backward); calls
        and returns ``closure()`` if given."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Nothing to zero: remote gradients are pushed, not kept."""

    def sync(self) -> None:
        """Sends every group's hyperparameters again (to a server that
        restarted from a checkpoint taken before the last change)."""
        for g in self.param_groups:
            for key in HYPER:
                kw = _kwargs(key, g[key])
                for client, table in g.targets:
                    client.update_optimizer(table, **kw)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the groups' values (sending the hyperparameters)."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of "
                             "parameter groups")
        for g, s in zip(self.param_groups, saved):
            if list(s.get("tables", [])) != g["tables"]:
                raise ValueError(f"loaded state dict's group holds tables "
                                 f"{s.get('tables')}, this one {g['tables']}")
        for g, s in zip(self.param_groups, saved):
            for k, v in s.items():
                if k not in ("params", "tables"):
                    g[k] = v

    # -- pickling: plain dicts and the targets; no step wrappers --

    def __getstate__(self) -> Dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state,
                "client": self._client,
                "groups": [(dict(g), g.targets) for g in self.param_groups]}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.defaults = state["defaults"]
        self.state = state["state"]
        self._client = state["client"]
        self.param_groups = [_Group(t, g) for g, t in state["groups"]]

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            vals = ", ".join(f"{k}={g[k]}" for k in HYPER)
            lines.append(f"Group {i}: tables={g['tables']}, {vals}")
        return "\n".join(lines) + "\n)"

