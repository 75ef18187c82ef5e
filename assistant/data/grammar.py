"""Paraphrase grammar: templates per intent -> labelled sentences (text, intent, slots).

Template syntax (documented in data/grammar.yaml too)::

    (a|b|c)        one of the alternatives (nested groups allowed; an empty one is allowed)
    [words]        optional words
    {slot}         a value of the slot, drawn from lists[slot]; recorded as the slot's value
    {slot:list}    a value of the slot drawn from lists[list] (e.g. {date:date_on} after "on")
    <name>         a shared fragment from `fragments:` (itself a template)

FSC templates live under ``fsc.groups``: ``"action/object"`` (or just ``"action"`` when one
template set covers several objects). There ``{object}`` / ``{location}`` are said with the
phrases under ``fsc.labels``, and the sentence's slots are the labels of the intent
(``fsc_frame``) -- "make it louder" is increase_volume_none with object=volume. A template
with ``{location}`` serves the intents with a location; one without serves location 'none'.
For open-slot intents every slot value is an exact substring of the sentence.

Template ids are ``<intent>/<name>`` and unique, so dev/test splits can hold out phrasings.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


from ..config import read_yaml
from ..frames import Frame, format_frame
from ..paths import DATA_DIR
from ..schema import FSC_COMBINATIONS, Schema, fsc_frame, load_schema

DEFAULT_GRAMMAR = DATA_DIR / "grammar.yaml"
_WORD_RE = re.compile(r"^[a-z0-9 ]*$")


class GrammarError(ValueError):
    """A bad grammar file or template; the message names the file, the template and the fix."""


@dataclass
class Sentence:
    text: str
    intent: str
    slots: dict[str, str] = field(default_factory=dict)
    template_id: str = ""


# --------------------------------------------------------------------------- template trees
# Each node knows its number of derivations `n`; derivation i of a node is rendered directly
# (mixed radix over sequences), so sampling distinct indices samples distinct derivations.


class _Word:
    __slots__ = ("text", "n")

    def __init__(self, text: str):
        self.text, self.n = text, 1


class _Seq:
    __slots__ = ("items", "n")

    def __init__(self, items: tuple):
        self.items, self.n = items, 1
        for item in items:
            self.n *= item.n


class _Alt:
    __slots__ = ("options", "n")

    def __init__(self, options: tuple):
        self.options, self.n = options, sum(o.n for o in options)


class _SlotRef:
    __slots__ = ("slot", "values", "n")

    def __init__(self, slot: str, values: tuple[str, ...]):
        self.slot, self.values, self.n = slot, values, len(values)


_Node = Union[_Word, _Seq, _Alt, _SlotRef]


class _Unresolved(Exception):
    """A {slot} or <fragment> that cannot be resolved; the parser adds where it is."""


class _Parser:
    """Recursive descent over the template syntax; resolves fragments and slot lists."""

    def __init__(self, text: str, where: str, resolve_slot, resolve_fragment):
        self.text, self.pos, self.where = text, 0, where
        self.resolve_slot, self.resolve_fragment = resolve_slot, resolve_fragment

    def error(self, msg: str) -> GrammarError:
        return GrammarError(f"{self.where}: {msg} at character {self.pos} of {self.text!r}")

    def parse(self) -> _Node:
        node = self.sequence(stop="")
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.text[self.pos]!r}")
        return node

    def sequence(self, stop: str) -> _Node:
        items: list[_Node] = []
        word = ""
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            c = self.text[self.pos]
            if c in "([{<":
                if word.strip():
                    items.append(_Word(word.strip()))
                word = ""
                items.append(self.special(c))
            elif c in ")]}>|":
                raise self.error(f"unbalanced {c!r}")
            else:
                word += c
                self.pos += 1
        if word.strip():
            items.append(_Word(word.strip()))
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    def special(self, c: str) -> _Node:
        self.pos += 1
        if c == "(":
            options = [self.sequence(stop="|)")]
            while self.pos < len(self.text) and self.text[self.pos] == "|":
                self.pos += 1
                options.append(self.sequence(stop="|)"))
            self.expect(")")
            return _Alt(tuple(options))
        if c == "[":
            inner = self.sequence(stop="]")
            self.expect("]")
            return _Alt((inner, _Seq(())))
        close = "}" if c == "{" else ">"
        end = self.text.find(close, self.pos)
        if end < 0:
            raise self.error(f"missing {close!r}")
        name = self.text[self.pos:end].strip()
        self.pos = end + 1
        try:
            return self.resolve_slot(name) if c == "{" else self.resolve_fragment(name)
        except _Unresolved as e:
            raise GrammarError(f"{self.where}: {e}") from None

    def expect(self, c: str) -> None:
        if self.pos >= len(self.text) or self.text[self.pos] != c:
            raise self.error(f"missing {c!r}")
        self.pos += 1


def _render(node: _Node, index: int, words: list[str], slots: dict[str, str]) -> None:
    """Derivation number `index` (0 <= index < node.n) -> words and slot values."""
    if isinstance(node, _Word):
        words.append(node.text)
    elif isinstance(node, _SlotRef):
        words.append(node.values[index])
        slots[node.slot] = node.values[index]
    elif isinstance(node, _Seq):
        subs = []
        for item in reversed(node.items):     # mixed radix: the last item varies fastest
            index, sub = divmod(index, item.n)
            subs.append(sub)
        for item, sub in zip(node.items, reversed(subs)):
            _render(item, sub, words, slots)
    else:
        for option in node.options:
            if index < option.n:
                _render(option, index, words, slots)
                return
            index -= option.n


def _slot_names(node: _Node) -> set[str]:
    if isinstance(node, _SlotRef):
        return {node.slot}
    children = node.items if isinstance(node, _Seq) else node.options if isinstance(node, _Alt) else ()
    return set().union(*(_slot_names(c) for c in children)) if children else set()


def _slots_said_twice(node: _Node) -> str:
    """A slot that two parts of one sequence can both say ('' if none); alternatives may share."""
    if isinstance(node, _Seq):
        seen: set[str] = set()
        for item in node.items:
            names = _slot_names(item)
            if seen & names:
                return sorted(seen & names)[0]
            seen |= names
    children = node.items if isinstance(node, _Seq) else node.options if isinstance(node, _Alt) else ()
    for child in children:
        twice = _slots_said_twice(child)
        if twice:
            return twice
    return ""


def _render_text(node: _Node, index: int) -> tuple[str, dict[str, str]]:
    words: list[str] = []
    slots: dict[str, str] = {}
    _render(node, index, words, slots)
    return " ".join(" ".join(words).split()), slots


# --------------------------------------------------------------------------- grammar


@dataclass
class _Template:
    id: str
    intent: str
    source: str
    tree: _Node
    slots: dict[str, str]        # fixed slots (FSC labels); open slots come from the tree
    open_slots: list[str] = field(default_factory=list)   # slot names the template can fill


class Grammar:
    def __init__(self, templates: list[_Template], path: Path | None = None):
        self.path = path
        self._templates = {t.id: t for t in templates}
        self._by_intent: dict[str, list[str]] = {}
        for t in templates:
            self._by_intent.setdefault(t.intent, []).append(t.id)

    @property
    def intents(self) -> list[str]:
        return list(self._by_intent)

    def template_ids(self, intent: str | None = None) -> list[str]:
        """Template ids of one intent (all ids when intent is None); [] for an unknown intent."""
        if intent is None:
            return list(self._templates)
        return list(self._by_intent.get(intent, []))

    def template_source(self, template_id: str) -> str:
        return self._templates[template_id].source

    def template_size(self, template_id: str) -> int:
        """How many derivations the template has (an upper bound on its distinct sentences)."""
        return self._templates[template_id].tree.n

    def expand(self, schema: Schema, template_ids: list[str] | None = None, per_template: int = 20,
               seed: int = 0) -> list[Sentence]:
        """Up to per_template distinct sentences per template, sampled with the seed.

        Each template draws from its own seeded stream, so its sentences do not depend on
        which other templates are expanded. Texts are distinct over the whole result.
        """
        ids = self.template_ids() if template_ids is None else list(template_ids)
        unknown = [t for t in ids if t not in self._templates]
        if unknown:
            raise GrammarError(f"unknown template id(s) {unknown[:5]} (see Grammar.template_ids())")
        seen: set[str] = set()
        out: list[Sentence] = []
        for tid in ids:
            template = self._templates[tid]
            if template.intent not in schema.intents:
                raise GrammarError(f"{self.path}: template {tid!r} is for intent {template.intent!r} "
                                   f"which the schema {schema.path} does not define; add it there")
            spec = schema.intents[template.intent]
            stray = [x for x in [*template.slots, *template.open_slots] if x not in spec.slots]
            if stray:
                raise GrammarError(f"{self.path}: template {tid!r} fills slot(s) {stray} which intent "
                                   f"{template.intent!r} does not have in {schema.path}; add them there")
            for text, slots in self._sample(template, per_template, seed):
                if text not in seen:
                    seen.add(text)
                    out.append(Sentence(text, template.intent, {**template.slots, **slots}, tid))
        return out

    def all_sentences(self, schema: Schema, limit_per_template: int | None = 200) -> list[Sentence]:
        """Every sentence of every template (a seed-0 sample of limit_per_template where bigger)."""
        limit = limit_per_template if limit_per_template is not None else max(
            self.template_size(t) for t in self._templates)
        return self.expand(schema, None, per_template=limit, seed=0)

    @staticmethod
    def _sample(template: _Template, k: int, seed: int) -> list[tuple[str, dict[str, str]]]:
        rng = random.Random(f"{seed}|{template.id}")
        total = template.tree.n
        if total <= 4 * k:
            order = list(range(total))
            rng.shuffle(order)
        else:
            order = (rng.randrange(total) for _ in range(50 * k))  # type: ignore[assignment]
        texts: dict[str, dict[str, str]] = {}
        tried: set[int] = set()
        for index in order:
            if len(texts) >= k:
                break
            if index in tried:
                continue
            tried.add(index)
            text, slots = _render_text(template.tree, index)
            texts.setdefault(text, slots)
        return list(texts.items())


# --------------------------------------------------------------------------- loading


def load_grammar(path: str | Path | None = None) -> Grammar:
    path = Path(path) if path is not None else DEFAULT_GRAMMAR
    raw = read_yaml(path, GrammarError, f"grammar not found: {path} (pass an existing grammar.yaml; default "
                                        f"{DEFAULT_GRAMMAR})")
    if not isinstance(raw, dict):
        raise GrammarError(f"{path}: expected top-level mappings lists:, fragments:, fsc:, intents:")
    return Grammar(_Loader(path, raw).templates(), path)


def domain_vocab_texts(limit_per_template: int = 50) -> list[str]:
    """Frame strings of the whole domain grammar + every intent/slot name and enum value of the schema:
    the texts whose tokens make a stock checkpoint's output vocabulary (``SLUModel.from_pretrained(...,
    default_vocab=domain_vocab_texts)``, ``assistant.model.vocab.OutputVocab``)."""
    schema = load_schema()
    texts = []
    for s in load_grammar().all_sentences(schema, limit_per_template=limit_per_template):
        texts.append(format_frame(Frame(intent=s.intent, slots=dict(s.slots), transcript=s.text)))
    for name, intent in schema.intents.items():
        texts.append(f"| {name} |")
        texts += [f"{slot}=" for slot in intent.slots]
    for slot in schema.slots.values():
        texts += list(slot.values or [])
    return texts


_RESOLVING = object()


def _check_source(path: Path, where: str, source: Any) -> None:
    if not isinstance(source, str) or not source.strip():
        raise GrammarError(f"{path}: template {where} must be a string like \"(turn|switch) on the lights\", "
                           f"got {source!r}")


class _Loader:
    def __init__(self, path: Path, raw: dict[str, Any]):
        self.path = path
        for key in ("lists", "fragments", "fsc", "intents"):
            if not isinstance(raw.get(key) or {}, dict):
                raise GrammarError(f"{path}: '{key}:' must be a mapping of names to entries")
        for name, values in (raw.get("lists") or {}).items():
            if not isinstance(values, list) or not values:
                raise GrammarError(f"{path}: lists.{name} must be a non-empty list of values")
        for name, group in ((raw.get("fsc") or {}).get("groups") or {}).items():
            if not isinstance(group, dict):
                raise GrammarError(f"{path}: fsc.groups[{name!r}] must map template names to templates")
        self.lists = {str(k): [self._value(k, v) for v in vs] for k, vs in (raw.get("lists") or {}).items()}
        self.fragment_sources = {str(k): str(v) for k, v in (raw.get("fragments") or {}).items()}
        self.fragments: dict[str, _Node] = {}
        fsc = raw.get("fsc") or {}
        self.labels = fsc.get("labels") or {}
        self.groups = fsc.get("groups") or {}
        self.intents = raw.get("intents") or {}

    def _value(self, list_name: Any, value: Any) -> str:
        text = " ".join(str(value).lower().split())
        if not text or not _WORD_RE.match(text):
            raise GrammarError(f"{self.path}: list {list_name!r} value {value!r} must be lower-case words "
                               "(letters, digits, spaces; no punctuation)")
        return text

    def fragment(self, name: str) -> _Node:
        if name not in self.fragments:
            if name not in self.fragment_sources:
                raise _Unresolved(f"unknown fragment <{name}>; define it under fragments:")
            self.fragments[name] = _RESOLVING  # type: ignore[assignment]  # recursion guard
            self.fragments[name] = self.parse(self.fragment_sources[name], f"fragment <{name}>", self.no_slots)
        if self.fragments[name] is _RESOLVING:
            raise _Unresolved(f"fragment <{name}> refers to itself")
        return self.fragments[name]

    def no_slots(self, name: str) -> _Node:
        raise _Unresolved(f"fragments and FSC label phrases cannot hold slots ({{{name}}})")

    def parse(self, text: str, where: str, resolve_slot) -> _Node:
        return _Parser(str(text).lower(), f"{self.path}: {where}", resolve_slot, self.fragment).parse()

    def open_slot(self, used: set[str]):
        def resolve(spec: str) -> _Node:
            slot, _, list_name = spec.partition(":")
            slot, list_name = slot.strip(), (list_name.strip() or slot.strip())
            used.add(slot)
            if list_name not in self.lists:
                raise _Unresolved(f"no list {list_name!r} for {{{spec}}}; add it under lists:")
            return _SlotRef(slot, tuple(self.lists[list_name]))
        return resolve

    def label_slot(self, where: str, labels: dict[str, str]):
        def resolve(spec: str) -> _Node:
            if spec not in labels:
                has = sorted(labels) or "no object/location"
                raise _Unresolved(f"{{{spec}}} is not usable here (this intent has {has}); "
                                  "FSC templates use {object}/{location}")
            phrase = (self.labels.get(spec) or {}).get(labels[spec], labels[spec])
            return self.parse(phrase, f"{where} ({spec} {labels[spec]!r})", self.no_slots)
        return resolve

    def templates(self) -> list[_Template]:
        out = self.fsc_templates()
        for intent, body in self.intents.items():
            if not isinstance(body, dict) or not body:
                raise GrammarError(f"{self.path}: intents.{intent} must map template names to templates")
            for name, source in body.items():
                tid = f"{intent}/{name}"
                _check_source(self.path, tid, source)
                used: set[str] = set()
                tree = self.parse(source, f"template {tid}", self.open_slot(used))
                twice = _slots_said_twice(tree)
                if twice:
                    raise GrammarError(f"{self.path}: template {tid}: slot {{{twice}}} can be said twice in one "
                                       "sentence; a sentence holds one value per slot")
                out.append(_Template(tid, str(intent), str(source), tree, {}, sorted(used)))
        return out

    def fsc_templates(self) -> list[_Template]:
        """Templates of the FSC intents whose group exists (a domain may leave FSC out)."""
        known = {a for a, _, _ in FSC_COMBINATIONS} | {f"{a}/{o.lower()}" for a, o, _ in FSC_COMBINATIONS}
        for key in self.groups:
            if key not in known:
                raise GrammarError(f"{self.path}: fsc.groups[{key!r}] is not an FSC action or action/object; "
                                   f"use one of {sorted(known)}")
        out: list[_Template] = []
        for action, obj, location in FSC_COMBINATIONS:
            intent, slots = fsc_frame(action, obj, location)
            group_key = f"{action}/{obj.lower()}"
            group = self.groups.get(group_key)
            if group is None:
                group_key = action
                group = self.groups.get(action)
            if not group:
                continue
            for name, source in group.items():
                _check_source(self.path, f"fsc.groups[{group_key!r}].{name}", source)
                has_location = "{location}" in str(source)
                if has_location != ("location" in slots):
                    continue
                if "object" in slots and group_key == action and "{object}" not in str(source):
                    raise GrammarError(f"{self.path}: fsc.groups[{action!r}].{name} serves several objects "
                                       "so it must say {object}")
                tid = f"{intent}/{name}"
                tree = self.parse(source, f"template {tid}", self.label_slot(f"template {tid}", slots))
                out.append(_Template(tid, intent, str(source), tree, dict(slots)))
        return out
