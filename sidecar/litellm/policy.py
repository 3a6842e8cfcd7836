"""What a caller gets on model discovery: every rule of the decision, and nothing else.

Like ``h11/_state.py`` for HTTP/1.1, this module holds the whole decision and does no I/O: plain data in,
plain data out. ``discovery.py`` gathers the inputs (LiteLLM's answer, the caller's budget state, the
verdict on a refusal), asks ``decide`` and carries the outcome out; its metric and its log line follow
from the outcome alone.

The inputs:

- the **policy** the operator chose (``all``, ``free_only``, ``blocked``);
- whether LiteLLM's answer on this **route** can be cut to the free models: every discovery route but
  ``/v2/model/info``, whose pages and counts LiteLLM computes over every model;
- LiteLLM's **status**, and its **refusal** if the answer is a budget refusal (``budget_errors.Refusal``)
  with its verdict (``levels.Verdict``);
- the caller's **budget state** (``levels.BudgetState``): ``None`` when it is not established (the
  ``blocked`` policy never asks, a request without a credential cannot be asked about).

The outcomes:

==============================================  =========  ==============================================
LiteLLM's answer                                policy     outcome
==============================================  =========  ==============================================
a budget refusal                                blocked    ``block``: the refusal as it is
a budget refusal                                other      ``rescue``: rendered from the admin's view
200, caller over budget                         all        ``mark``: LiteLLM's answer, marked
200, caller over budget, route that can be cut  free_only  ``filter``: LiteLLM's answer, paid cut out
200, caller over budget, ``/v2/model/info``     free_only  ``filter``, rendered from the admin's view
anything else                                   any        ``pass``: LiteLLM's answer as it is
==============================================  =========  ==============================================

A ``pass`` whose budget state could not be established says why (``unknown``). When an outcome cannot be
carried out - the caller's access or the catalog cannot be looked up, LiteLLM's answer has an unknown
shape - it fails towards LiteLLM's answer (``Outcome.failed``): unchanged but for the phantom mark.

What a spent caller may use now (``usable``): the free models it may access - or none, where a level it
is spent at refuses zero-cost models too on this LiteLLM (``rules.RULES``; ``release``, LiteLLM's version,
is looked up only for such levels, ``asks_version``). ``free_only`` lists exactly those (``Usable.admits``:
possibly an empty list, in LiteLLM's shape); ``all`` lists everything the caller may access and says which
class is usable in a mark. The budget view, ``doctor`` and the fallback ask the same ``usable``.

The marks (``Outcome.marks``): a marked, filtered or rescued answer carries ``x-sidecar-budget-exceeded:
true``, ``x-sidecar-policy``, ``x-sidecar-budget-scope`` (the spent level: ``key``, ``key_window``,
``team``, ``team_member``, ``user``, ``end_user``, ``org``, ``model``, ``project``, ``access_group``,
``tag``, ``proxy`` or ``unknown``) and ``x-sidecar-budget-usable`` (``free``, ``none`` or ``others``: which
of the models it may access LiteLLM serves it now); any answer that follows a
phantom refusal (LiteLLM's records show that level within budget) carries ``x-sidecar-budget-phantom:
true`` - a blocked or failed one too, and a refusal on a passed-through call (``phantom_marks``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from sidecar.litellm.budget_errors import BudgetLevel, Refusal
from sidecar.litellm.levels import BudgetState, Finding, Verdict
from sidecar.litellm.rules import Release, refuses_free, version_matters

Marks = tuple[tuple[bytes, bytes], ...]
Visible = Callable[[str], bool]

EXCEEDED = b"x-sidecar-budget-exceeded"
POLICY = b"x-sidecar-policy"
LEVEL = b"x-sidecar-budget-scope"  # the spent level; the header's name is older than the word
USABLE = b"x-sidecar-budget-usable"  # which of the listed models LiteLLM serves the caller now
PHANTOM = (b"x-sidecar-budget-phantom", b"true")


class Policy(enum.StrEnum):
    """What a caller over budget gets on discovery (the ``policy`` setting)."""

    ALL = "all"  # every model it may access
    FREE_ONLY = "free_only"  # only the free models it may access
    BLOCKED = "blocked"  # LiteLLM's answer as it is

    @property
    def asks_budget(self) -> bool:
        """Whether discovery establishes a caller's budget state: ``blocked`` answers as LiteLLM does."""
        return self is not Policy.BLOCKED

    def visible(
        self, is_free: Visible, allowed: Visible, usable: Usable, without: frozenset[str] = frozenset()
    ) -> Visible:
        """Which models an answer rendered for a caller over budget shows: those it may access, and under
        ``free_only`` only the free ones LiteLLM serves it now (``usable``, ``without`` the models whose own
        budget is spent)."""
        if self is Policy.FREE_ONLY:
            now = usable.admits(is_free, allowed, without)
            return lambda name: is_free(name) and now(name)
        return allowed


class Usable(enum.StrEnum):
    """Which of the models a caller may access LiteLLM serves it now: the value of the
    ``x-sidecar-budget-usable`` mark, the budget view's ``usable_models``, the ``free_only`` list."""

    ALL = "all"  # within budget: every model it may access
    OTHERS = "others"  # only per-model budgets spent: every model but those
    FREE = "free"  # spent: the zero-cost ones (LiteLLM skips its budget checks for them)
    NONE = "none"  # spent at a level that refuses zero-cost models too, on this LiteLLM (``rules.RULES``)

    def admits(self, is_free: Visible, allowed: Visible, without: frozenset[str] = frozenset()) -> Visible:
        """The models of this class among those the caller may access, ``without`` the models whose own
        budget is spent."""
        if self is Usable.NONE:
            return _nothing
        free = self is Usable.FREE

        def kept(name: str) -> bool:
            return (not free or is_free(name)) and allowed(name) and name not in without

        return kept


def _nothing(name: str) -> bool:
    return False


def usable(spent: Iterable[BudgetLevel], release: Release | None) -> Usable:
    """What a caller spent at the levels ``spent`` (none: within budget) may use on LiteLLM ``release``
    (``None``: unknown, answered conservatively by ``rules.refuses_free``). A per-model budget refuses its
    model only (``spent_models``); every other level refuses every paid model."""
    every = list(spent)
    levels = [level for level in every if level is not BudgetLevel.MODEL]
    if not levels:
        return Usable.OTHERS if every else Usable.ALL
    return Usable.NONE if any(refuses_free(level, release) for level in levels) else Usable.FREE


def spent_levels(state: BudgetState | None, refusal: Refusal | None) -> tuple[BudgetLevel, ...]:
    """Every level a caller is spent at, as far as it is known: its state's, and the refusal's."""
    levels = tuple(s.level for s in state.spent) if state is not None else ()
    return (*levels, refusal.level) if refusal is not None else levels


def spent_models(state: BudgetState | None, refusal: Refusal | None) -> frozenset[str]:
    """The models whose own budget (``model_max_budget``) a refusal of this caller said is spent: known
    from the refusals themselves, with no look-up per model."""
    models = {s.model for s in state.spent if s.model is not None} if state is not None else set()
    if refusal is not None and refusal.model is not None:
        models.add(refusal.model)
    return frozenset(models)


def asks_version(levels: Iterable[BudgetLevel]) -> bool:
    """Whether what a caller spent at ``levels`` may use depends on LiteLLM's version: only then is it
    looked up."""
    return any(version_matters(level) for level in levels)


class Action(enum.StrEnum):
    PASS = "pass"  # LiteLLM's answer as it is
    BLOCK = "block"  # LiteLLM's refusal as it is, under ``blocked``
    MARK = "mark"  # LiteLLM's answer, marked
    FILTER = "filter"  # LiteLLM's answer with the paid models cut out, marked
    RESCUE = "rescue"  # an answer rendered from the admin's view in place of LiteLLM's refusal, marked
    FAIL = "fail"  # LiteLLM's answer, because the outcome decided could not be carried out


_MARKED = frozenset({Action.MARK, Action.FILTER, Action.RESCUE})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer: the action, and what the marks, the metric and the log line say of it."""

    action: Action
    policy: Policy
    level: BudgetLevel | None = None  # the spent level; None within budget
    phantom: bool = False
    rendered: bool = False  # rendered from the admin's view rather than cut from LiteLLM's answer
    usable: Usable = Usable.ALL  # which of the caller's models LiteLLM serves it now
    without: frozenset[str] = frozenset()  # the models whose own budget is spent (per-model budgets)
    verdict: Verdict | None = None
    unknown: str = ""  # ``pass``: why the budget state could not be established
    reason: str = ""  # ``fail``: why the outcome decided could not be carried out
    cause: str = ""  # ``fail``: the kind of that reason, a metric's label

    @property
    def marks(self) -> Marks:
        phantom = (PHANTOM,) if self.phantom else ()
        if self.action not in _MARKED:
            return phantom
        level = (self.level or BudgetLevel.UNKNOWN).encode()
        policy, usable = self.policy.value.encode(), self.usable.value.encode()
        return ((EXCEEDED, b"true"), (POLICY, policy), (LEVEL, level), (USABLE, usable), *phantom)

    def failed(self, reason: str, cause: str) -> Outcome:
        """This outcome, not carried out: LiteLLM's answer instead."""
        return replace(self, action=Action.FAIL, rendered=False, reason=reason, cause=cause)


def decide(
    policy: Policy,
    *,
    cuttable: bool,
    status: int,
    refusal: Refusal | None,
    verdict: Verdict | None,
    state: BudgetState | None,
    release: Release | None = None,
) -> Outcome:
    """The outcome for one discovery answer (the table above); ``release``: LiteLLM's version, where what
    a spent caller may use depends on it (``asks_version``)."""
    if refusal is not None:
        level = (state or BudgetState()).named(refusal.level, verdict)
        phantom = verdict is not None and verdict.verdict == Finding.PHANTOM
        action = Action.BLOCK if policy is Policy.BLOCKED else Action.RESCUE
        now = usable(spent_levels(state, refusal), release)
        without = spent_models(state, refusal)
        return Outcome(action, policy, level, phantom, action is Action.RESCUE, now, without, verdict)
    if state is None:
        return _PASS[policy]
    if not state.known and state.admitted:
        return Outcome(Action.PASS, policy, unknown=state.reason)
    if not state.over or status != 200:
        return _PASS[policy]
    if policy is Policy.ALL:
        action, rendered = Action.MARK, False
    else:
        action, rendered = Action.FILTER, not cuttable
    now, without = usable(spent_levels(state, None), release), spent_models(state, None)
    return Outcome(action, policy, state.level, state.phantom, rendered, now, without, state.verdict)


_PASS = {policy: Outcome(Action.PASS, policy) for policy in Policy}  # the most common outcome, made once


def phantom_marks(verdict: Verdict | None) -> Marks:
    """The marks of a budget refusal on a passed-through call: its status and body go unchanged."""
    return (PHANTOM,) if verdict is not None and verdict.verdict == Finding.PHANTOM else ()
