"""Prometheus text exposition (format 0.0.4): metric families, their writer and a parser.

The agent renders every scrape with :func:`render` and reads textfiles with
:func:`parse`. It used ``prometheus_client`` for both; importing that package costs the
agent process ~10 MB of RSS (it pulls in ``http.server``, ``ssl``, ``email``, ``wsgiref``
for servers the agent does not run), and its writer, which validates and escapes every
label name of every sample, took as long as all the collectors together (docs/DESIGN.md,
Agent). The output is byte for byte what ``prometheus_client.generate_latest`` writes for
the same families (labels sorted by name, Go's float formatting), which
``tests/unit/test_exposition.py`` checks against ``prometheus_client`` itself.

Nothing here imports a part of sentinel, so any part may use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

# The text format's names (no UTF-8 names: sentinel writes none, and a textfile that
# has one is refused with a message rather than rewritten).
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ExpositionError(ValueError):
    """Text that is not a valid exposition; the message names the line and what is wrong."""


class Sample(NamedTuple):
    """One sample: its full name (with any ``_total``/``_bucket`` suffix), labels, value."""

    name: str
    labels: dict[str, str]
    value: float


class LabelSet(dict[str, str]):
    """A label set built once and shared by its series across scrapes, its text made once.

    A collector whose series keep their labels (a GPU's, a device's) builds one per
    series and passes it as a sample's labels; :func:`render` writes its ``text`` as is
    instead of looking the set up. Never change one once built: the text would not follow.
    """

    __slots__ = ("text",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__(pairs)
        self.text = _format_labels(tuple(self.items()))


class MetricFamily:
    """A metric family: the name its ``# HELP``/``# TYPE`` lines carry, and its samples."""

    __slots__ = ("name", "documentation", "type", "samples", "_labelnames")
    name: str
    documentation: str
    type: str
    samples: list[Sample]
    _labelnames: tuple[str, ...]

    def __init__(self, name: str, documentation: str, typ: str,
                 labels: Sequence[str] | None = None) -> None:
        _init(self, name, documentation, typ, labels)

    def add_sample(self, name: str, labels: dict[str, str], value: float) -> None:
        """Append one sample as is."""
        self.samples.append(Sample(name, labels, value))

    def reset(self) -> None:
        """Drop the samples, so a collector can fill the same family again next collect.

        Building ~65 families a scrape cost ~1 us each; a collector whose families are
        fixed keeps them and resets them at the start of each collect, so none carries a
        value from an earlier one. The list is emptied in place: a holder of the last
        collect's family sees it empty, never mixed (render keeps its own copy).
        """
        self.samples.clear()

    def _labelled(self, values: Sequence[str]) -> dict[str, str]:
        """Return the label set of these values (ValueError unless one per label name)."""
        return dict(zip(self._labelnames, values, strict=True))

    def __repr__(self) -> str:
        return f"MetricFamily({self.name!r}, {self.type}, {len(self.samples)} samples)"


# Names already checked: a collector builds the same families every scrape, and the
# regular expressions cost more than the rest of building one. Bounded, since a textfile
# may name anything.
_VALID: set[tuple[str, str, tuple[str, ...]]] = set()
_VALID_MAX = 4096


def _check(name: str, typ: str, labelnames: tuple[str, ...]) -> None:
    """Raise ValueError for a bad name, type or label name; remember a good family."""
    if not METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    if typ not in TYPES:
        raise ValueError(f"invalid metric type {typ!r} (valid: {', '.join(TYPES)})")
    for ln in labelnames:
        if not LABEL_NAME.match(ln):
            raise ValueError(f"invalid label name {ln!r} in {name}")
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add((name, typ, labelnames))


def _init(f: MetricFamily, name: str, documentation: str, typ: str,
          labels: Sequence[str] | None) -> None:
    """Set up a family: MetricFamily.__init__, which gauges and counters call without super()."""
    f.name = name
    f.documentation = documentation
    f.type = typ
    f.samples = []
    f._labelnames = labelnames = tuple(labels) if labels else ()
    if (name, typ, labelnames) not in _VALID:
        _check(name, typ, labelnames)


class GaugeMetricFamily(MetricFamily):
    """A gauge; ``add_metric(label_values, value)`` adds one series."""

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        _init(self, name, documentation, "gauge", labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """Add the series with these label values (in the family's label order)."""
        self.samples.append(Sample(self.name, label_set(self._labelnames, labels), value))


class CounterMetricFamily(MetricFamily):
    """A counter; its name gets ``_total`` when it lacks it, as prometheus_client does."""

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        if not name.endswith("_total"):
            name += "_total"
        _init(self, name, documentation, "counter", labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """Add the series with these label values (in the family's label order)."""
        self.samples.append(Sample(self.name, label_set(self._labelnames, labels), value))


def label_set(names: tuple[str, ...], values: Sequence[str]) -> LabelSet:
    """Return the shared LabelSet of these label names and values (built on first use).

    A series keeps its labels from scrape to scrape, so ``add_metric`` hands out one
    LabelSet per (names, values), formatted once, instead of a dict per sample per
    scrape. Bounded at :data:`_LABELSETS_MAX`, emptied when full. ValueError unless one
    value per name.
    """
    key = (names, tuple(values))
    ls = _LABELSETS.get(key)
    if ls is None:
        if len(key[1]) != len(names):
            raise ValueError(f"{len(key[1])} label values for the label names {names}")
        if len(_LABELSETS) >= _LABELSETS_MAX:
            _LABELSETS.clear()
        ls = _LABELSETS[key] = LabelSet(zip(names, key[1], strict=True))
    return ls


# The label sets add_metric handed out, by (label names, label values).
_LABELSETS: dict[tuple[tuple[str, ...], tuple[str, ...]], LabelSet] = {}
_LABELSETS_MAX = 4096


class HistogramMetricFamily(MetricFamily):
    """A histogram: ``add_metric(label_values, [(le, cumulative count), ...], sum)``."""

    def __init__(self, name: str, documentation: str,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name, documentation, "histogram", labels)

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]],
                   sum_value: float) -> None:
        """Add one series: its buckets (sorted, ending with ``+Inf``), count and sum."""
        base = self._labelled(labels)
        for le, count in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**base, "le": le}, count))
        self.samples.append(Sample(self.name + "_count", base, buckets[-1][1]))
        self.samples.append(Sample(self.name + "_sum", base, sum_value))


# -- writing --------------------------------------------------------------------------
def format_value(v: float) -> str:
    """Return ``v`` as Go (and so Prometheus and prometheus_client) writes it."""
    d = float(v)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:  # NaN
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go uses an exponent from 1e21 on where Python waits until 1e16, but both agree on
    # the digits: move the point (positive values only, as prometheus_client does).
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_value(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def _format_labels(pairs: tuple[tuple[str, str], ...]) -> str:
    """Return ``{name="value",...}``, sorted by name, values escaped ('' if no labels)."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(pairs)) + "}"


def render(families: Iterable[MetricFamily]) -> bytes:
    """Return the text exposition of ``families``, in their order.

    A family whose samples equal those it had when last rendered (same name, type and
    help; the same sample names, labels and values) is written from that text: most of
    a node's series (thresholds, limits, error counters, idle disks) do not change from
    one scrape to the next, and comparing samples costs a fraction of formatting them.
    """
    out: list[str] = []
    add = out.append
    cache = _FAMILIES
    if len(cache) > _FAMILIES_MAX:
        cache.clear()
    if len(_LABELSTRS) > _LABELSTRS_MAX:
        _LABELSTRS.clear()
    for f in families:
        samples = f.samples
        key = (f.name, f.type, f.documentation)
        hit = cache.get(key)
        # -0.0 == 0.0 but is written "-0.0": a hit is only checked for one where the
        # kept samples had a zero, and a family with one is neither kept nor served.
        if hit is not None and hit[0] == samples and (
                not hit[2] or not _negative_zero_at(samples, hit[2])):
            add(hit[1])
            continue
        header = hit[3] if hit is not None else _header(f)
        text = _render_family(f, header)
        zeros = tuple(i for i, s in enumerate(samples) if s[2] == 0)
        if zeros and _negative_zero_at(samples, zeros):
            cache.pop(key, None)
        else:
            # A copy: a later append must not match.
            cache[key] = (samples.copy(), text, zeros, header)
        add(text)
    return "".join(out).encode()


def _negative_zero_at(samples: list[Sample], where: tuple[int, ...]) -> bool:
    """Return True if a sample at one of these indexes is -0.0."""
    for i in where:
        v = samples[i][2]
        if v == 0 and math.copysign(1.0, v) < 0:
            return True
    return False


def _header(f: MetricFamily) -> str:
    """Return a family's HELP and TYPE lines."""
    doc = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {f.name} {doc}\n# TYPE {f.name} {f.type}\n"


def _render_family(f: MetricFamily, header: str) -> str:
    """Return one family's text: ``header`` (its HELP and TYPE lines), then its samples."""
    out = [header]
    add = out.append
    labelstrs = _LABELSTRS
    for name, labels, value in f.samples:
        # format_value inlined for the common case: repr() is Go's text unless the
        # value is infinite, NaN or has 7+ digits before the point.
        s = repr(value) if type(value) is float else repr(float(value))
        if s[-1] == "f" or s[-1] == "n" or s.find(".") > 6:
            s = format_value(value)
        if type(labels) is LabelSet:
            add(f"{name}{labels.text} {s}\n")
        elif labels:
            key = tuple(labels.items())
            ls = labelstrs.get(key)
            if ls is None:
                ls = labelstrs[key] = _format_labels(key)
            add(f"{name}{ls} {s}\n")
        else:
            add(f"{name} {s}\n")
    return "".join(out)


# Label sets as written, by their (name, value) pairs in the order the sample has them.
# A node's series keep their labels from scrape to scrape (its GPU labels recur in every
# GPU family), so each is formatted once; bounded, and emptied when full.
_LABELSTRS: dict[tuple[tuple[str, str], ...], str] = {}
_LABELSTRS_MAX = 4096
# Each family's last samples, text, the indexes of its zero values and its HELP and
# TYPE lines, by (name, type, help). Bounded, and emptied when full (a textfile may name
# anything); at most one entry per family name and help.
_FAMILIES: dict[tuple[str, str, str], tuple[list[Sample], str, tuple[int, ...], str]] = {}
_FAMILIES_MAX = 4096


# -- parsing --------------------------------------------------------------------------
_NAME_AT = re.compile(r"[ \t]*([a-zA-Z_:][a-zA-Z0-9_:]*)")
_PAIR_AT = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*')
_ESCAPE = re.compile(r"\\(.)")
_LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
# Sample-name suffixes that belong to a family of another name, by that family's type.
# (A counter's samples may carry _total under a TYPE line without it, as the
# OpenMetrics-style files prometheus_client reads do.)
_SUFFIXES = (("_bucket", ("histogram",)), ("_count", ("histogram", "summary")),
             ("_sum", ("histogram", "summary")), ("_total", ("counter",)))


def _unescape_label(raw: str, where: str) -> str:
    def one(m: re.Match[str]) -> str:
        c = _LABEL_ESCAPES.get(m.group(1))
        if c is None:
            raise ExpositionError(f"{where}: invalid escape \\{m.group(1)} in a label value "
                                  '(valid: \\\\, \\", \\n)')
        return c

    return _ESCAPE.sub(one, raw) if "\\" in raw else raw


def _parse_number(tok: str, where: str) -> float:
    try:
        if "_" in tok:
            raise ValueError(tok)
        return float(tok)
    except ValueError:
        raise ExpositionError(f"{where}: value {tok!r} is not a number (e.g. 1, 2.5e3, "
                              "NaN, +Inf)") from None


def _parse_labels(line: str, pos: int, where: str) -> tuple[dict[str, str], int]:
    """Parse ``name="value",...}`` from ``pos`` (just after ``{``); return labels, end."""
    labels: dict[str, str] = {}
    while True:
        while line[pos:pos + 1] in (" ", "\t"):
            pos += 1
        if line[pos:pos + 1] == "}":
            return labels, pos + 1
        m = _PAIR_AT.match(line, pos)
        if m is None:
            raise ExpositionError(f'{where}: expected label="value" or }} at column {pos + 1}')
        name = m.group(1)
        if name in labels:
            raise ExpositionError(f"{where}: label {name} given twice")
        labels[name] = _unescape_label(m.group(2), where)
        pos = m.end()
        if line[pos:pos + 1] == ",":
            pos += 1
        elif line[pos:pos + 1] != "}":
            raise ExpositionError(f"{where}: expected , or }} after label {name}")


def _parse_sample(line: str, where: str) -> Sample:
    m = _NAME_AT.match(line)
    if m is None:
        raise ExpositionError(f"{where}: expected a metric name, found {line.strip()[:40]!r}")
    name, pos = m.group(1), m.end()
    labels: dict[str, str] = {}
    if line[pos:pos + 1] == "{":
        labels, pos = _parse_labels(line, pos + 1, where)
    elif line[pos:pos + 1] not in (" ", "\t"):
        raise ExpositionError(f"{where}: unexpected {line[pos:pos + 1]!r} after {name}")
    rest = line[pos:].split()
    if len(rest) == 2:
        # node_exporter's textfile collector refuses them too: a sample's time is when
        # Prometheus scraped it, and an old timestamp would hide a stale file.
        raise ExpositionError(f"{where}: {name} has a timestamp; textfiles may not have "
                              "timestamps")
    if len(rest) != 1:
        raise ExpositionError(f"{where}: expected one value after {name}, found "
                              f"{len(rest)} fields")
    return Sample(name, labels, _parse_number(rest[0], where))


class _Parser:
    """Group the lines of one exposition into families, as Prometheus's own parser does."""

    def __init__(self) -> None:
        self.families: dict[str, MetricFamily] = {}
        self.has_help: set[str] = set()
        self.has_type: set[str] = set()

    def family(self, name: str) -> MetricFamily:
        f = self.families.get(name)
        if f is None:
            f = self.families[name] = MetricFamily(name, "", "untyped")
        return f

    def comment(self, line: str, where: str) -> None:
        parts = line[1:].split(None, 2)
        if not parts or parts[0] not in ("HELP", "TYPE"):
            return  # a plain comment
        what = parts[0]
        if len(parts) < 2 or not METRIC_NAME.match(parts[1]):
            raise ExpositionError(f"{where}: {what} needs a valid metric name")
        name = parts[1]
        f = self.family(name)
        if what == "HELP":
            if name in self.has_help:
                raise ExpositionError(f"{where}: second HELP line for {name}")
            self.has_help.add(name)
            text = line.split(None, 3)[3] if len(parts) == 3 else ""
            f.documentation = text.replace("\\\\", "\x00").replace("\\n", "\n").replace(
                "\x00", "\\")
            return
        typ = parts[2].strip() if len(parts) == 3 else ""
        if typ not in TYPES:
            raise ExpositionError(f"{where}: unknown type {typ!r} for {name} (valid: "
                                  f"{', '.join(TYPES)})")
        if name in self.has_type:
            raise ExpositionError(f"{where}: second TYPE line for {name}")
        if f.samples:
            raise ExpositionError(f"{where}: TYPE line for {name} after its samples")
        self.has_type.add(name)
        f.type = typ

    def sample(self, s: Sample, where: str) -> None:
        f = self.families.get(s.name)
        if f is None or f.type in ("histogram",):
            for suffix, types in _SUFFIXES:
                base = self.families.get(s.name[: -len(suffix)]) if s.name.endswith(
                    suffix) else None
                if base is not None and base.type in types:
                    f = base
                    break
            else:
                if f is not None:
                    raise ExpositionError(f"{where}: histogram {s.name} has a sample without "
                                          "_bucket, _count or _sum")
        if f is None:
            f = self.family(s.name)
        if f.type == "histogram" and s.name.endswith("_bucket") and "le" not in s.labels:
            raise ExpositionError(f"{where}: bucket {s.name} has no le label")
        if f.type == "summary" and s.name == f.name and "quantile" not in s.labels:
            raise ExpositionError(f"{where}: summary {s.name} has no quantile label")
        f.samples.append(s)

    def result(self) -> list[MetricFamily]:
        out = []
        for f in self.families.values():
            if f.type == "counter" and not f.name.endswith("_total"):
                # As prometheus_client read them: a counter is exported with _total.
                total = f.name + "_total"
                if total in self.families:
                    raise ExpositionError(f"counter {f.name} and a family {total} both")
                if {s.name for s in f.samples} == {f.name, total}:
                    raise ExpositionError(f"counter {f.name} has samples named both {f.name} "
                                          f"and {total}")
                f.name = total
                f.samples = [Sample(total, s.labels, s.value) for s in f.samples]
            out.append(f)
        return out


def parse(text: str) -> list[MetricFamily]:
    """Return the families of an exposition; ExpositionError names the first bad line.

    The rules are those of Prometheus's text parser (samples join the family named by
    their HELP/TYPE lines, ``_bucket``/``_count``/``_sum`` that of their histogram or
    summary), plus node_exporter's textfile rule that samples carry no timestamp.
    """
    p = _Parser()
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"line {lineno}"
        if stripped.startswith("#"):
            p.comment(stripped, where)
        else:
            p.sample(_parse_sample(stripped, where), where)
    return p.result()
