"""Mirroring job files: YAML → frozen dataclasses, every mistake reported as ``FILE:LINE: FIELD: …``.

Why: a job file is written by hand, runs unattended (cron, a Kubernetes Indexed Job) and
decides what gets pushed where, so a typo must stop the job before anything is pushed, with a
message that points at the line. The file is read with ``yaml.compose`` (nodes keep their
marks, so every value knows its line) and validated field by field; duplicate keys, unknown
keys and secrets are errors, not silently ignored.

Schema (every key of ``defaults`` may also be given on one image, overriding the default)::

    version: 1                       # optional; the only version there is
    defaults:
      to: erofs+lz4                  # FORMAT as for `convert --to` (default: erofs)
      profile: spec                  # spec | containerd-2.1 | containerd-2.3 (default: spec)
      blob_compression: zstd         # none | zstd[,level=N], as for `convert --blob-compression`
      chunk_size: 4M                 # with zstd: bytes per frame, 0 = one frame (`--chunk-size`)
      verity: false                  # append a dm-verity tree (`--verity`)
      platforms: [linux/amd64]       # OS/ARCH[/VARIANT] list; absent or []: every platform
      merge_index: false             # keep the source manifests in the pushed index
      dest: "registry.example/mirror/{repository}:{tag}-{format}"   # required (here or per image)
      cache_repo: registry.example/mirror/layer-cache                # optional shared layer cache
      verify: false                  # run `convert verify` on each pushed image; a failure fails it
    images:
      - source: ghcr.io/org/app:1.4                  # one image: REPOSITORY:TAG or REPOSITORY@DIGEST
      - source: docker.io/library/debian             # a repository (no tag) ...
        tags:                                        # ... and which of its tags to mirror
          include: ["12.*", "/^bookworm(-[0-9]+)?$/"]   # globs, or /regex/ (default: every tag)
          exclude: ["*-slim"]                            # dropped even if included
          newest: 3                                      # then keep the 3 newest (tag order)
        to: erofs                                    # a per-image override

``dest`` is a template: ``{registry}``, ``{repository}`` and ``{tag}`` come from the source
reference (``docker.io/library/debian:bookworm`` → ``docker.io``, ``library/debian``,
``bookworm``), ``{format}`` is the format and blob encoding made tag-safe (``erofs+zstd,level=3``
→ ``erofs-zstd-level-3``; with ``blob_compression: zstd`` and ``verity: true``,
``erofs.zstd.verity``: see ``converter.pipeline.options.tag_suffix``); ``{{`` and ``}}`` are
literal braces. ``source``, ``dest`` and ``cache_repo`` may refer to environment variables as
``${NAME}`` (``$$`` is a literal ``$``), but only those the job was given (``job_environment``:
names allowed on the command line with ``--env NAME``, and every ``CONVERT_JOB_*`` variable), so a
job file cannot read the environment at large; a variable not given is an error. Expanded values
are never shown: the ``Job`` knows them (``Job.redact``) and every message, log line and report
shows ``${NAME}`` instead (see docs/security.md). Credentials never go in a job file: they come
from the Docker config (``DOCKER_CONFIG``, ``~/.docker/config.json``) or a credential helper.

Tag patterns: a glob (``*``, ``?``, ``[...]``) matches the whole tag, case-sensitively; a
``/regex/`` is searched for anywhere in the tag (as skopeo sync does: anchor it with ``^…$``).
Tag order, for ``newest``: tags that look like versions (``v1.2.3``, ``12``, ``1.4.0-rc1``)
sort by their numbers, a pre-release before its release (semver), and above every other
tag; other tags sort naturally (``build-9`` < ``build-10``).
"""

from __future__ import annotations

import difflib
import fnmatch
import heapq
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from converter.blob.encoding import BlobCompression, BlobEncoding, parse_blob_compression, parse_size
from converter.erofs.target import TargetFormat, parse_format
from converter.errors import ConverterError, InvalidFormat, InvalidReference, JobFileError, UsageError
from converter.oci.mediatypes import Profile
from converter.oci.model import Platform
from converter.pipeline.options import resolve_encoding, tag_suffix
from converter.reference import Reference, parse_reference

JOB_VERSION = 1
JOB_ENV_PREFIX = "CONVERT_JOB_"  # environment variables every job file may read
PLACEHOLDERS = ("registry", "repository", "tag", "format")
SETTING_KEYS = ("to", "profile", "platforms", "merge_index", "dest", "cache_repo", "verify", "blob_compression",
                "chunk_size", "verity")
_TOP_KEYS = ("version", "defaults", "images")
_IMAGE_KEYS = ("source", "tags", *SETTING_KEYS)
_TAG_KEYS = ("include", "exclude", "newest")
# Keys that would hold credentials: refused with a pointer to the right place for them.
_SECRET_KEYS = frozenset({"username", "user", "password", "passwd", "token", "auth", "auths", "credentials",
                          "identitytoken", "secret", "registry_token"})
_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$)|(.?))")
_FIELD_RE = re.compile(r"\{([^{}]*)\}|(\{\{)|(\}\})|([{}])")
# What a tag may contain (distribution's grammar); a glob using anything else never matches.
_GLOB_CHARS_RE = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]+")
_VERSION_RE = re.compile(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?")
_NATURAL_RE = re.compile(r"(\d+)")


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a job file: the file, the 1-based line and the dotted field path."""

    file: str
    line: int
    field: str

    def child(self, name: str | int, line: int) -> Where:
        path = f"{self.field}[{name}]" if isinstance(name, int) else (
            f"{self.field}.{name}" if self.field else name)
        return Where(self.file, line, path)

    def error(self, message: str) -> JobFileError:
        return JobFileError(message, file=self.file, line=self.line, field=self.field)


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository without tag or digest: where tags are listed, or the layer cache lives."""

    registry: str
    repository: str

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag=tag)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


def parse_repository(text: str) -> Repository:
    """``registry/repository`` (Docker's normalisation); a tag or digest is an InvalidReference."""
    if _explicit_tag_or_digest(text):
        raise InvalidReference(f"parsing repository {text!r}: give a repository without tag or digest")
    ref = parse_reference(text)
    return Repository(ref.registry, ref.repository)


def _explicit_tag_or_digest(text: str) -> bool:
    """Whether ``text`` names a tag or digest (parse_reference would add ``:latest`` otherwise)."""
    if "@" in text:
        return True
    return text.rfind(":") > text.rfind("/")


# --- tag order and filters --------------------------------------------------------------------


def _natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """``build-9`` < ``build-10``: digit runs compare as numbers, the rest as text."""
    parts = _NATURAL_RE.split(text)
    return tuple((0, int(p), "") if i % 2 else (1, 0, p) for i, p in enumerate(parts) if p)


def tag_sort_key(tag: str) -> tuple[Any, ...]:
    """The order ``newest`` uses (see the module docstring); a total order, ties broken by text."""
    match = _VERSION_RE.fullmatch(tag)
    if match is None:
        return (0, _natural_key(tag), tag)
    numbers = tuple(int(n) for n in match.group(1).split("."))
    pre = match.group(2)
    if pre is None:
        release: tuple[Any, ...] = (1,)
    else:
        # semver §11: numeric identifiers compare as numbers and below alphanumeric ones.
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
        release = (0, ids)
    return (1, numbers, release, tag)


def sort_tags(tags: Iterable[str]) -> list[str]:
    """``tags`` oldest first, by ``tag_sort_key``."""
    return sorted(tags, key=tag_sort_key)


@dataclass(frozen=True, slots=True)
class TagPattern:
    """One ``include``/``exclude`` entry: a glob, or a ``/regex/`` searched in the tag."""

    text: str
    regex: re.Pattern[str]
    is_regex: bool

    def matches(self, tag: str) -> bool:
        if self.is_regex:
            return self.regex.search(tag) is not None
        return self.regex.fullmatch(tag) is not None


def parse_tag_pattern(text: str) -> TagPattern:
    """A TagPattern; a bad regex or a glob that can never match a tag is a ValueError."""
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        try:
            return TagPattern(text, re.compile(text[1:-1]), True)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {text[1:-1]!r}: {exc}") from None
    if not text:
        raise ValueError("an empty pattern matches no tag")
    if not _GLOB_CHARS_RE.fullmatch(text):
        raise ValueError(f"glob {text!r} can never match a tag (tags hold only letters, digits, '_', '.', "
                         "'-'); write /regex/ for a regular expression")
    return TagPattern(text, re.compile(fnmatch.translate(text)), False)


@dataclass(frozen=True, slots=True)
class TagFilter:
    """Which tags of a repository to mirror: included, not excluded, then the ``newest`` N."""

    include: tuple[TagPattern, ...] = ()
    exclude: tuple[TagPattern, ...] = ()
    newest: int | None = None

    def select(self, tags: Iterable[str]) -> list[str]:
        """The chosen tags, newest first (by ``tag_sort_key``); with ``newest`` only that many
        candidates are held while ``tags`` streams."""
        chosen: set[str] = set()
        for tag in tags:
            if tag in chosen or (self.include and not any(p.matches(tag) for p in self.include)) \
                    or any(p.matches(tag) for p in self.exclude):
                continue
            chosen.add(tag)
            if self.newest is not None and len(chosen) > 2 * self.newest + 64:
                chosen = set(heapq.nlargest(self.newest, chosen, key=tag_sort_key))
        return heapq.nlargest(self.newest, chosen, key=tag_sort_key) if self.newest is not None \
            else sorted(chosen, key=tag_sort_key, reverse=True)


# --- destination templates --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DestTemplate:
    """A ``dest`` value (environment references already expanded) and where it was written."""

    text: str
    where: Where

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(m.group(1) for m in _FIELD_RE.finditer(self.text) if m.group(1) is not None)

    def expand(self, source: Reference, fmt: TargetFormat, encoding: BlobEncoding | None = None) -> str:
        """The template with every placeholder filled (not yet parsed as a reference)."""
        values = {
            "registry": source.registry,
            "repository": source.repository,
            "tag": source.tag or "",
            "format": tag_suffix(fmt, encoding),
        }

        def fill(match: re.Match[str]) -> str:
            if match.group(2):
                return "{"
            if match.group(3):
                return "}"
            return values[match.group(1)]

        return _FIELD_RE.sub(fill, self.text)

    def render(self, source: Reference, fmt: TargetFormat, encoding: BlobEncoding | None = None) -> Reference:
        """The destination for ``source`` in ``fmt`` (and ``encoding``); a JobFileError at ``dest``'s
        line if invalid."""
        if source.tag is None and "tag" in self.fields:
            raise self.where.error(f"{{tag}} is used but the source {source} has no tag")
        text = self.expand(source, fmt, encoding)
        try:
            ref = parse_reference(text)
        except InvalidReference as exc:
            raise self.where.error(f"for source {source}: {text!r} is not a valid reference ({exc})") from None
        if ref.digest is not None or not _explicit_tag_or_digest(text):
            raise self.where.error(f"for source {source}: {text!r} must name a tag (the result's digest is "
                                   "only known after converting)")
        if ref.name == source.name and ref.tag == source.tag:
            raise self.where.error(f"for source {source}: the destination is the source itself")
        return ref


def _check_template(text: str, where: Where) -> DestTemplate:
    for match in _FIELD_RE.finditer(text):
        name, stray = match.group(1), match.group(4)
        if stray is not None:
            raise where.error(f"unbalanced {stray!r} in {text!r}: write {stray * 2} for a literal brace")
        if name is not None and name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise where.error(f"unknown placeholder {{{name}}} in {text!r}; known: {known}")
    return DestTemplate(text, where)


def job_environment(environ: Mapping[str, str], allow: Iterable[str] = ()) -> dict[str, str]:
    """The variables a job file may read from ``environ``: those named in ``allow`` and those
    starting with ``JOB_ENV_PREFIX``."""
    allowed = set(allow)
    return {k: v for k, v in environ.items() if k in allowed or k.startswith(JOB_ENV_PREFIX)}


def expand_env(text: str, env: Mapping[str, str], where: Where) -> str:
    """``${NAME}`` → its value (absent is an error), ``$$`` → ``$``; any other ``$`` is an error.
    ``env`` holds only what the job may read (``job_environment``)."""

    def sub(match: re.Match[str]) -> str:
        name, dollar, other = match.groups()
        if name is not None:
            if name not in env:
                raise where.error(f"environment variable {name} is not set or not given to job files "
                                  f"(referenced as ${{{name}}}; allow it with --env {name}, or name it "
                                  f"{JOB_ENV_PREFIX}...)")
            return env[name]
        if dollar is not None:
            return "$"
        raise where.error(f"'$' must start ${{NAME}} or be doubled ($$), got {('$' + (other or ''))!r}")

    return _ENV_RE.sub(sub, text)


# --- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """How one image is converted and where it goes (defaults merged with the image's overrides)."""

    fmt: TargetFormat
    profile: Profile
    platforms: tuple[Platform, ...]
    merge_index: bool
    dest: DestTemplate
    cache_repo: Repository | None = None
    verify: bool = False
    encoding: BlobEncoding = field(default_factory=BlobEncoding)


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One item of ``images:``: a single ``ref``, or a ``repository`` with a ``tags`` filter."""

    index: int
    where: Where  # the entry's line; field "images[N]"
    source_text: str
    repository: Repository
    ref: Reference | None
    tags: TagFilter | None
    settings: Settings

    @property
    def label(self) -> str:
        """How the entry is written in the job (``images[2] ghcr.io/org/app``), for messages."""
        return f"{self.where.field} {self.source_text}"


def redact_values(text: str, expanded: Iterable[tuple[str, str]]) -> str:
    """``text`` with every expanded value (longest first) shown as its ``${NAME}``."""
    for name, value in sorted(expanded, key=lambda nv: -len(nv[1])):
        if value:
            text = text.replace(value, f"${{{name}}}")
    return text


class _Recording(Mapping[str, str]):
    """The job's environment, remembering which variables were expanded (to redact them)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.used: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        value = self._env[name]
        self.used[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job file. ``expanded``: the (name, value) of each environment variable the
    file referred to; ``redact`` hides those values in anything shown to people."""

    path: str
    images: tuple[ImageEntry, ...]
    defaults_line: int = 0
    version: int = JOB_VERSION
    expanded: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def redact(self, text: str) -> str:
        """``text`` with every expanded environment value replaced by ``${NAME}``."""
        return redact_values(text, self.expanded) if self.expanded else text

    def with_cache_repo(self, repo: Repository | None) -> Job:
        """The job with every image's ``cache_repo`` replaced (``--cache-repo`` on the command line)."""
        images = tuple(replace(e, settings=replace(e.settings, cache_repo=repo)) for e in self.images)
        return replace(self, images=images)


# --- reading YAML nodes -----------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "nothing (null)"
    return f"{node.value!r}"


def _mapping(node: yaml.Node, where: Where, known: tuple[str, ...]) -> dict[str, tuple[yaml.Node, Where]]:
    """A mapping's entries by key, each with its Where; unknown, duplicate or secret keys are errors."""
    if not isinstance(node, yaml.MappingNode):
        raise where.error(f"want a mapping with keys {', '.join(known)}, got {_kind(node)}")
    out: dict[str, tuple[yaml.Node, Where]] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = _line(key_node)
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":null"):
            raise Where(where.file, line, where.field).error("keys must be plain names")
        key = str(key_node.value)
        at = where.child(key, line)
        if key == "<<":
            raise at.error("YAML merge keys (<<) are not supported; put shared settings under defaults:")
        if key.lower() in _SECRET_KEYS:
            raise at.error("job files hold no credentials: put them in a Docker config (DOCKER_CONFIG or "
                           "~/.docker/config.json) or a credential helper")
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise at.error(f"unknown key{suggestion}; known keys here: {', '.join(known)}")
        if key in out:
            raise at.error(f"given twice (first on line {lines[key]})")
        out[key] = (value_node, at)
        lines[key] = line
    return out


def _text(node: yaml.Node, where: Where) -> str:
    """A scalar as written (``12`` and ``1.10`` stay the text they were, not numbers)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
        raise where.error(f"want a string, got {_kind(node)}")
    text = str(node.value)
    if not text.strip():
        raise where.error("must not be empty")
    return text


def _bool(node: yaml.Node, where: Where) -> bool:
    if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":bool"):
        raise where.error(f"want true or false, got {_kind(node)}")
    return bool(yaml.SafeLoader.bool_values[str(node.value).lower()])


def _int(node: yaml.Node, where: Where) -> int:
    if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":int"):
        raise where.error(f"want a whole number, got {_kind(node)}")
    value: int = yaml.SafeLoader("").construct_yaml_int(node)
    return value


def _list(node: yaml.Node, where: Where) -> list[tuple[yaml.Node, Where]]:
    """A list's items with their Where; a single scalar is taken as a one-item list."""
    if isinstance(node, yaml.ScalarNode) and not node.tag.endswith(":null"):
        return [(node, where.child(0, _line(node)))]
    if not isinstance(node, yaml.SequenceNode):
        raise where.error(f"want a list, got {_kind(node)}")
    return [(item, where.child(i, _line(item))) for i, item in enumerate(node.value)]


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Partial:
    """Settings as given in one place (defaults or an image); None where not given."""

    fmt: TargetFormat | None = None
    profile: Profile | None = None
    platforms: tuple[Platform, ...] | None = None
    merge_index: bool | None = None
    dest: DestTemplate | None = None
    cache_repo: Repository | None = None
    cache_repo_given: bool = False
    verify: bool | None = None
    blob_compression: tuple[BlobCompression, int | None, Where] | None = None
    chunk_size: tuple[int, Where] | None = None
    verity: bool | None = None


def _settings(entries: Mapping[str, tuple[yaml.Node, Where]], env: Mapping[str, str]) -> _Partial:
    values: dict[str, Any] = {}
    for key in SETTING_KEYS:
        if key not in entries:
            continue
        node, at = entries[key]
        if key == "to":
            try:
                values["fmt"] = parse_format(_text(node, at))
            except InvalidFormat as exc:
                raise at.error(str(exc)) from None
        elif key == "profile":
            text = _text(node, at)
            try:
                values["profile"] = Profile(text)
            except ValueError:
                names = " | ".join(p.value for p in Profile)
                raise at.error(f"unknown profile {text!r}; choose {names}") from None
        elif key == "platforms":
            platforms = []
            for item, item_at in _list(node, at) if not _is_null(node) else []:
                try:
                    platforms.append(Platform.parse(_text(item, item_at)))
                except ConverterError as exc:
                    raise item_at.error(str(exc)) from None
            values["platforms"] = tuple(platforms)
        elif key == "merge_index":
            values["merge_index"] = _bool(node, at)
        elif key == "verify":
            values["verify"] = _bool(node, at)
        elif key == "verity":
            values["verity"] = _bool(node, at)
        elif key == "blob_compression":
            try:
                values["blob_compression"] = (*parse_blob_compression(_text(node, at)), at)
            except InvalidFormat as exc:
                raise at.error(str(exc)) from None
        elif key == "chunk_size":
            try:
                size = _int(node, at) if node.tag.endswith(":int") else parse_size(_text(node, at))
                BlobEncoding(compression=BlobCompression.ZSTD, chunk_size=size)
            except UsageError as exc:
                raise at.error(str(exc)) from None
            values["chunk_size"] = (size, at)
        elif key == "dest":
            values["dest"] = _check_template(expand_env(_text(node, at), env, at), at)
        elif key == "cache_repo":
            values["cache_repo_given"] = True
            if not _is_null(node):
                try:
                    values["cache_repo"] = parse_repository(expand_env(_text(node, at), env, at))
                except InvalidReference as exc:
                    raise at.error(str(exc)) from None
    return _Partial(**values)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


def _merge(defaults: _Partial, own: _Partial, where: Where) -> Settings:
    dest = own.dest or defaults.dest
    if dest is None:
        raise where.error("no dest: give dest here or under defaults, e.g. "
                          "\"registry.example/mirror/{repository}:{tag}-{format}\"")
    profile = own.profile or defaults.profile or Profile.SPEC
    return Settings(
        fmt=own.fmt or defaults.fmt or TargetFormat(),
        profile=profile,
        encoding=_encoding(defaults, own, profile, where),
        platforms=own.platforms if own.platforms is not None else (defaults.platforms or ()),
        merge_index=own.merge_index if own.merge_index is not None else bool(defaults.merge_index),
        dest=dest,
        cache_repo=own.cache_repo if own.cache_repo_given else defaults.cache_repo,
        verify=own.verify if own.verify is not None else bool(defaults.verify),
    )


def _encoding(defaults: _Partial, own: _Partial, profile: Profile, where: Where) -> BlobEncoding:
    """The blob encoding from ``blob_compression``, ``chunk_size`` and ``verity`` (each may be a
    default or the image's own); a combination that cannot be made is an error at its line."""
    compression = own.blob_compression or defaults.blob_compression
    chunk = own.chunk_size or defaults.chunk_size
    verity = own.verity if own.verity is not None else bool(defaults.verity)
    at = chunk[1] if chunk is not None else compression[2] if compression is not None else where
    try:
        encoding = BlobEncoding(compression=compression[0] if compression else BlobCompression.NONE,
                                level=compression[1] if compression else None,
                                chunk_size=chunk[0] if chunk else None, verity=verity)
        return resolve_encoding(encoding, profile)
    except UsageError as exc:
        raise at.error(str(exc)) from None


# --- tags: ------------------------------------------------------------------------------------


def _tag_filter(node: yaml.Node, where: Where) -> TagFilter:
    entries = _mapping(node, where, _TAG_KEYS)
    patterns: dict[str, tuple[TagPattern, ...]] = {}
    for key in ("include", "exclude"):
        if key not in entries:
            continue
        value, at = entries[key]
        items = _list(value, at)
        if key == "include" and not items:
            raise at.error("an empty include selects no tag; leave include out to take every tag")
        found = []
        for item, item_at in items:
            try:
                found.append(parse_tag_pattern(_text(item, item_at)))
            except ValueError as exc:
                raise item_at.error(str(exc)) from None
        patterns[key] = tuple(found)
    newest = None
    if "newest" in entries:
        value, at = entries["newest"]
        newest = _int(value, at)
        if newest < 1:
            raise at.error(f"must be at least 1, got {newest}")
    return TagFilter(include=patterns.get("include", ()), exclude=patterns.get("exclude", ()), newest=newest)


# --- images: ----------------------------------------------------------------------------------


def _image(index: int, node: yaml.Node, where: Where, defaults: _Partial, env: Mapping[str, str]) -> ImageEntry:
    entries = _mapping(node, where, _IMAGE_KEYS)
    if "source" not in entries:
        raise where.error("no source: give source: REPOSITORY:TAG, or source: REPOSITORY with tags:")
    source_node, source_at = entries["source"]
    source_text = expand_env(_text(source_node, source_at), env, source_at)
    try:
        ref = parse_reference(source_text)
    except InvalidReference as exc:
        raise source_at.error(str(exc)) from None
    repository = Repository(ref.registry, ref.repository)
    tags: TagFilter | None = None
    explicit = _explicit_tag_or_digest(source_text)
    if "tags" in entries:
        tags_node, tags_at = entries["tags"]
        if explicit:
            raise source_at.error(f"{source_text} names a tag or digest, but tags: selects tags; give the "
                                  "repository alone")
        tags = _tag_filter(tags_node, tags_at)
    elif not explicit:
        raise source_at.error(f"{source_text} names no tag: write {source_text}:latest for one image, or add "
                              "tags: to choose tags of the repository")
    settings = _merge(defaults, _settings(entries, env), where)
    if tags is not None and "tag" not in settings.dest.fields:
        raise settings.dest.where.error(f"must contain {{tag}}: {where.field} selects several tags of "
                                        f"{repository}, which would overwrite each other")
    single = ref if tags is None else None
    if single is not None:
        settings.dest.render(single, settings.fmt, settings.encoding)  # fail now, at dest's line, not mid-run
    else:
        settings.dest.render(repository.with_tag("latest"), settings.fmt, settings.encoding)
    return ImageEntry(index=index, where=where, source_text=source_text, repository=repository, ref=single,
                      tags=tags, settings=settings)


def parse_job(text: str, *, filename: str = "<job>", env: Mapping[str, str] | None = None) -> Job:
    """Validate a job file's text; ``env`` supplies ``${NAME}`` references (default: none; the
    CLI passes ``job_environment``). An error's message shows no expanded value."""
    variables = _Recording(env if env is not None else {})
    try:
        job = _parse_job(text, filename, variables)
    except JobFileError as exc:
        if not variables.used:
            raise
        raise JobFileError(redact_values(exc.detail, variables.used.items()), file=exc.file, line=exc.line,
                           field=exc.field) from None
    return replace(job, expanded=tuple(sorted(variables.used.items())))


def _parse_job(text: str, filename: str, variables: Mapping[str, str]) -> Job:
    top = Where(filename, 1, "")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 0
        raise JobFileError(f"invalid YAML: {exc.problem or exc.context}", file=filename, line=line) from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"invalid YAML: {exc}", file=filename) from None
    if root is None:
        raise top.error("the job file is empty; it needs images:")
    entries = _mapping(root, Where(filename, _line(root), ""), _TOP_KEYS)
    if "version" in entries:
        node, at = entries["version"]
        if _int(node, at) != JOB_VERSION:
            raise at.error(f"unsupported version {node.value}; this tool reads version {JOB_VERSION}")
    defaults = _Partial()
    defaults_line = 0
    if "defaults" in entries:
        node, at = entries["defaults"]
        defaults_line = at.line
        if not _is_null(node):
            defaults = _settings(_mapping(node, at, SETTING_KEYS), variables)
    if "images" not in entries:
        raise Where(filename, _line(root), "images").error("missing: list the images to mirror")
    node, at = entries["images"]
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        got = "an empty list" if isinstance(node, yaml.SequenceNode) else _kind(node)
        raise at.error(f"want a non-empty list of images, got {got}")
    images = tuple(_image(i, item, at.child(i, _line(item)), defaults, variables) for i, item in enumerate(node.value))
    return Job(path=filename, images=images, defaults_line=defaults_line)


def load_job(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Job:
    """Read and validate the job file at ``path``."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError(f"not UTF-8 text: {exc.reason}", file=name) from None
    except OSError as exc:
        raise JobFileError(f"reading the job file: {exc.strerror or exc}", file=name) from None
    return parse_job(text, filename=name, env=env)


__all__ = [
    "JOB_ENV_PREFIX",
    "JOB_VERSION",
    "PLACEHOLDERS",
    "DestTemplate",
    "ImageEntry",
    "Job",
    "JobFileError",
    "Repository",
    "Settings",
    "TagFilter",
    "TagPattern",
    "Where",
    "expand_env",
    "job_environment",
    "load_job",
    "parse_job",
    "parse_repository",
    "parse_tag_pattern",
    "redact_values",
    "sort_tags",
    "tag_sort_key",
]
