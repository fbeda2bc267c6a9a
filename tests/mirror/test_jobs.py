"""Job files: the minimal example, every validation error (with its line and field), templates,
environment references, tag filters and tag order. Pure: no registry."""

from __future__ import annotations

import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.erofs.target import TargetFormat, parse_format
from converter.errors import UsageError
from converter.mirror.jobs import (
    DestTemplate,
    JobFileError,
    Repository,
    TagFilter,
    Where,
    expand_env,
    load_job,
    parse_job,
    parse_repository,
    sort_tags,
    tag_sort_key,
)
from converter.oci.mediatypes import Profile
from converter.oci.model import Platform
from converter.reference import parse_reference

MINIMAL = """\
defaults:
  to: erofs+lz4
  dest: "registry.example/mirror/{repository}:{tag}-{format}"   # also {registry}
images:
  - source: ghcr.io/org/app:1.4
  - source: docker.io/library/debian:bookworm
    to: erofs
"""


def job(text: str, **env: str) -> object:
    return parse_job(textwrap.dedent(text), filename="job.yaml", env=env)


def test_minimal_example() -> None:
    parsed = parse_job(MINIMAL, filename="job.yaml")
    app, debian = parsed.images
    assert app.ref == parse_reference("ghcr.io/org/app:1.4") and app.tags is None
    assert app.settings.fmt == parse_format("erofs+lz4")
    assert app.settings.profile is Profile.SPEC and app.settings.platforms == ()
    assert app.settings.merge_index is False and app.settings.cache_repo is None
    assert str(app.settings.dest.render(app.ref, app.settings.fmt)) == "registry.example/mirror/org/app:1.4-erofs-lz4"
    assert debian.settings.fmt == TargetFormat()
    assert debian.ref is not None
    assert (str(debian.settings.dest.render(debian.ref, debian.settings.fmt))
            == "registry.example/mirror/library/debian:bookworm-erofs")
    assert (app.where.line, debian.where.line) == (5, 6)
    assert debian.label == "images[1] docker.io/library/debian:bookworm"


@pytest.mark.parametrize(("template", "source", "fmt", "want"), [
    ("m.example/{registry}/{repository}:{tag}", "docker.io/library/debian:bookworm", "erofs",
     "m.example/docker.io/library/debian:bookworm"),
    ("m.example/x/{repository}:{tag}-{format}", "debian:12", "erofs+zstd,level=3",
     "m.example/x/library/debian:12-erofs-zstd-level-3"),
    ("m.example/{repository}:{format}", "ghcr.io/a/b@sha256:" + "a" * 64, "erofs+lz4hc,level=9",
     "m.example/a/b:erofs-lz4hc-level-9"),
], ids=["registry", "format-options", "digest-source"])
def test_dest_templates(template: str, source: str, fmt: str, want: str) -> None:
    entry = job(f"""
        images:
          - source: "{source}"
            to: "{fmt}"
            dest: "{template}"
        """).images[0]  # type: ignore[attr-defined]
    assert entry.ref is not None
    assert str(entry.settings.dest.render(entry.ref, entry.settings.fmt)) == want


def test_literal_braces_and_dollars() -> None:
    where = Where("job.yaml", 3, "defaults.dest")
    assert expand_env("a$$b${X}c", {"X": "1"}, where) == "a$b1c"
    template = DestTemplate("m.example/{{x}}/{repository}:{tag}}}", where)
    assert template.fields == {"repository", "tag"}
    assert template.expand(parse_reference("a.example/app:1"), TargetFormat()) == "m.example/{x}/app:1}"


def test_env_references() -> None:
    parsed = job("""
        defaults:
          dest: "${REG}/mirror/{repository}:{tag}"
          cache_repo: ${REG}/cache
        images:
          - source: ${SRC}/app:1
        """, REG="mirror.example", SRC="src.example")
    entry = parsed.images[0]  # type: ignore[attr-defined]
    assert entry.source_text == "src.example/app:1"
    assert str(entry.settings.dest.render(entry.ref, entry.settings.fmt)) == "mirror.example/mirror/app:1"
    assert entry.settings.cache_repo == Repository("mirror.example", "cache")


def test_env_reference_unset_is_an_error_at_its_line() -> None:
    with pytest.raises(JobFileError) as err:
        job("""
            defaults:
              to: erofs
              dest: "${MISSING}/m/{repository}:{tag}"
            images:
              - source: a.example/app:1
            """)
    assert (err.value.line, err.value.field) == (4, "defaults.dest")
    assert "MISSING is not set" in str(err.value)
    assert str(err.value).startswith("job.yaml:4: defaults.dest: ")


def test_per_image_overrides_every_default() -> None:
    parsed = job("""
        defaults:
          to: erofs+lz4
          profile: containerd-2.3
          platforms: [linux/amd64]
          merge_index: true
          dest: "d.example/{repository}:{tag}"
          cache_repo: d.example/cache
        images:
          - source: a.example/one:1
          - source: a.example/two:1
            to: erofs+zstd,level=9
            profile: containerd-2.1
            platforms: [linux/arm64/v8, linux/amd64]
            merge_index: false
            dest: "e.example/{repository}:{tag}-{format}"
            cache_repo: e.example/other-cache
          - source: a.example/three:1
            platforms: []
            cache_repo: null
        """)
    one, two, three = parsed.images  # type: ignore[attr-defined]
    assert one.settings.fmt == parse_format("erofs+lz4") and one.settings.profile is Profile.CONTAINERD_23
    assert one.settings.platforms == (Platform("linux", "amd64"),) and one.settings.merge_index is True
    assert one.settings.cache_repo == Repository("d.example", "cache")
    assert two.settings.fmt == parse_format("erofs+zstd,level=9") and two.settings.profile is Profile.CONTAINERD_21
    assert two.settings.platforms == (Platform("linux", "arm64", "v8"), Platform("linux", "amd64"))
    assert two.settings.merge_index is False
    assert str(two.settings.dest.render(two.ref, two.settings.fmt)) == "e.example/two:1-erofs-zstd-level-9"
    assert two.settings.cache_repo == Repository("e.example", "other-cache")
    assert three.settings.platforms == () and three.settings.cache_repo is None


def test_repository_with_tag_filters() -> None:
    parsed = job("""
        defaults:
          dest: "m.example/{repository}:{tag}"
        images:
          - source: docker.io/library/debian
            tags:
              include: ["12.*", "/^bookworm(-[0-9]+)?$/"]
              exclude: ["*-slim"]
              newest: 3
        """)
    entry = parsed.images[0]  # type: ignore[attr-defined]
    assert entry.ref is None and entry.repository == Repository("docker.io", "library/debian")
    assert entry.tags is not None
    tags = ["12.1", "12.10", "12.9", "12.9-slim", "bookworm", "bookworm-20240101", "bookworm-slim", "11.8",
            "latest", "xbookworm"]
    assert entry.tags.select(tags) == ["12.10", "12.9", "12.1"]
    assert parse_job(textwrap.dedent("""
        defaults: {dest: "m.example/{repository}:{tag}"}
        images:
          - source: docker.io/library/debian
            tags: {include: ["/^bookworm/"], exclude: ["*-slim"]}
        """)).images[0].tags.select(tags) == ["bookworm-20240101", "bookworm"]  # type: ignore[union-attr]


def test_tags_without_include_take_every_tag() -> None:
    entry = job("""
        defaults: {dest: "m.example/{repository}:{tag}"}
        images:
          - source: a.example/app
            tags: {newest: 2}
        """).images[0]  # type: ignore[attr-defined]
    assert entry.tags.select(["1", "3", "2", "latest"]) == ["3", "2"]


def test_tag_order_is_semver_aware_and_natural() -> None:
    tags = ["latest", "1.10.0", "1.9.0", "1.2.0", "1.2.0-rc.1", "1.2.0-rc.10", "1.2.0-rc.2", "1.2.0-alpha",
            "v2", "10", "build-10", "build-9", "bookworm"]
    assert sort_tags(tags) == ["bookworm", "build-9", "build-10", "latest", "1.2.0-alpha", "1.2.0-rc.1",
                               "1.2.0-rc.2", "1.2.0-rc.10", "1.2.0", "1.9.0", "1.10.0", "v2", "10"]
    # a total order: equal numbers are still ordered (by text), so results never depend on input order
    assert tag_sort_key("1.2") < tag_sort_key("v1.2")
    assert sort_tags(reversed(tags)) == sort_tags(tags)


def test_with_cache_repo_replaces_every_image() -> None:
    parsed = parse_job(MINIMAL, filename="job.yaml")
    changed = parsed.with_cache_repo(Repository("c.example", "cache"))
    assert {e.settings.cache_repo for e in changed.images} == {Repository("c.example", "cache")}
    assert {e.settings.cache_repo for e in changed.with_cache_repo(None).images} == {None}


def test_load_job_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL)
    assert len(load_job(path).images) == 2
    with pytest.raises(JobFileError, match=r"nope.yaml: reading the job file: No such file"):
        load_job(tmp_path / "nope.yaml")


def test_parse_repository() -> None:
    assert parse_repository("cache") == Repository("docker.io", "library/cache")
    assert parse_repository("localhost:5000/mirror/cache") == Repository("localhost:5000", "mirror/cache")
    with pytest.raises(UsageError, match="without tag or digest"):
        parse_repository("r.example/cache:1")


def test_blob_encoding_keys_and_format_placeholder() -> None:
    parsed = job('defaults:\n  blob_compression: zstd,level=9\n  verity: true\n'
                 '  dest: "m.example/{repository}:{tag}-{format}"\nimages:\n  - source: a.example/x:1\n'
                 '  - source: a.example/y:1\n    chunk_size: 256K\n  - source: a.example/z:1\n'
                 '    blob_compression: none\n    verity: false\n')
    x, y, z = (image.settings for image in parsed.images)
    assert x.encoding.canonical() == "zstd,level=9,chunk=4194304,verity"
    assert y.encoding.canonical() == "zstd,level=9,chunk=262144,verity"
    assert z.encoding.canonical() == "none"
    dests = [str(image.settings.dest.render(image.ref, image.settings.fmt, image.settings.encoding))
             for image in parsed.images if image.ref is not None]
    assert dests == ["m.example/x:1-erofs.zstd-level-9.verity", "m.example/y:1-erofs.zstd-level-9.chunk-256k.verity",
                     "m.example/z:1-erofs"]


def test_job_errors_are_usage_errors() -> None:
    with pytest.raises(JobFileError) as err:
        job("images: []")
    assert isinstance(err.value, UsageError) and err.value.exit_status == 2


# --- every validation error, with its line and field ------------------------------------------

HEAD = 'defaults:\n  dest: "m.example/{repository}:{tag}"\nimages:\n'

ERRORS = [
    ("unknown-top-key", HEAD + "  - source: a.example/x:1\nimage: []\n", 5, "image", "did you mean images?"),
    ("missing-images", 'defaults:\n  to: erofs\n', 1, "images", "missing"),
    ("empty-images", "images: []\n", 1, "images", "non-empty list"),
    ("images-not-a-list", "images: {source: a.example/x:1}\n", 1, "images", "non-empty list"),
    ("empty-file", "# nothing\n", 1, "", "empty"),
    ("not-a-mapping", "- a\n- b\n", 1, "", "want a mapping"),
    ("yaml-syntax", HEAD + "  - source: [a.example/x:1\n", 5, "", "invalid YAML"),
    ("version", "version: 2\n" + HEAD + "  - source: a.example/x:1\n", 1, "version", "unsupported version 2"),
    ("defaults-not-mapping", "defaults: [to]\nimages:\n  - source: a.example/x:1\n", 1, "defaults",
     "want a mapping"),
    ("image-not-mapping", HEAD + "  - a.example/x:1\n", 4, "images[0]", "want a mapping"),
    ("no-source", HEAD + "  - to: erofs\n", 4, "images[0]", "no source"),
    ("bad-reference", HEAD + "  - source: a.example/UPPER:1\n", 4, "images[0].source", "lowercase"),
    ("source-without-tag", HEAD + "  - source: a.example/x\n", 4, "images[0].source", "names no tag"),
    ("tag-and-tags", HEAD + "  - source: a.example/x:1\n    tags: {newest: 1}\n", 4, "images[0].source",
     "names a tag or digest"),
    ("unknown-format", HEAD + "  - source: a.example/x:1\n    to: erofs+lz5\n", 5, "images[0].to",
     "unknown compression algorithm 'lz5'"),
    ("bad-level", "defaults:\n  to: erofs+zstd,level=99\n  dest: m.example/{repository}:{tag}\nimages:\n"
     "  - source: a.example/x:1\n", 2, "defaults.to", "out of range"),
    ("unknown-profile", HEAD + "  - source: a.example/x:1\n    profile: containerd-9\n", 5, "images[0].profile",
     "choose spec | containerd-2.1 | containerd-2.3"),
    ("bad-platform", HEAD + "  - source: a.example/x:1\n    platforms:\n      - linux/amd64\n      - linux\n", 7,
     "images[0].platforms[1]", "OS/ARCH"),
    ("merge-not-bool", HEAD + "  - source: a.example/x:1\n    merge_index: maybe\n", 5, "images[0].merge_index",
     "want true or false"),
    ("no-dest", "images:\n  - source: a.example/x:1\n", 2, "images[0]", "no dest"),
    ("unknown-placeholder", "defaults:\n  dest: m.example/{repo}:{tag}\nimages:\n  - source: a.example/x:1\n",
     2, "defaults.dest", "unknown placeholder {repo}"),
    ("unbalanced-brace", "defaults:\n  dest: m.example/{repository}:{tag\nimages:\n  - source: a.example/x:1\n",
     2, "defaults.dest", "unbalanced"),
    ("dest-invalid", "defaults:\n  dest: M.example/{repository}/UP:{tag}\nimages:\n  - source: a.example/x:1\n",
     2, "defaults.dest", "not a valid reference"),
    ("dest-digest", "defaults:\n  dest: m.example/{repository}@sha256:" + "0" * 64 + "\nimages:\n"
     "  - source: a.example/x:1\n", 2, "defaults.dest", "must name a tag"),
    ("dest-no-tag", "defaults:\n  dest: m.example/{repository}\nimages:\n  - source: a.example/x:1\n", 2,
     "defaults.dest", "must name a tag"),
    ("dest-is-source", "defaults:\n  dest: \"{registry}/{repository}:{tag}\"\nimages:\n"
     "  - source: a.example/x:1\n", 2, "defaults.dest", "the destination is the source itself"),
    ("tags-dest-without-tag", 'defaults:\n  dest: "m.example/{repository}:{format}"\nimages:\n'
     "  - source: a.example/x\n    tags: {newest: 2}\n", 2, "defaults.dest", "must contain {tag}"),
    ("digest-source-tag-placeholder", HEAD + "  - source: a.example/x@sha256:" + "1" * 64 + "\n", 2,
     "defaults.dest", "{tag} is used but the source"),
    ("newest-zero", HEAD + "  - source: a.example/x\n    tags:\n      newest: 0\n", 6, "images[0].tags.newest",
     "at least 1"),
    ("newest-text", HEAD + "  - source: a.example/x\n    tags:\n      newest: three\n", 6,
     "images[0].tags.newest", "whole number"),
    ("bad-regex", HEAD + "  - source: a.example/x\n    tags:\n      include: [\"/(/\"]\n", 6,
     "images[0].tags.include[0]", "invalid regular expression"),
    ("impossible-glob", HEAD + "  - source: a.example/x\n    tags:\n      include:\n        - ok\n"
     "        - \"a/b\"\n", 8, "images[0].tags.include[1]", "can never match a tag"),
    ("empty-include", HEAD + "  - source: a.example/x\n    tags:\n      include: []\n", 6,
     "images[0].tags.include", "selects no tag"),
    ("unknown-tags-key", HEAD + "  - source: a.example/x\n    tags:\n      newst: 2\n", 6, "images[0].tags.newst",
     "did you mean newest?"),
    ("duplicate-key", HEAD + "  - source: a.example/x:1\n    to: erofs\n    to: erofs+lz4\n", 6, "images[0].to",
     "given twice (first on line 5)"),
    ("secret", HEAD + "  - source: a.example/x:1\n    password: hunter2\n", 5, "images[0].password",
     "no credentials"),
    ("secret-in-defaults", "defaults:\n  token: abc\nimages:\n  - source: a.example/x:1\n", 2, "defaults.token",
     "no credentials"),
    ("merge-key", "base: &b {to: erofs}\n" + HEAD + "  - source: a.example/x:1\n    <<: *b\n", 1, "base",
     "unknown key"),
    ("merge-key-in-image", HEAD + "  - source: a.example/x:1\n    <<: {to: erofs}\n", 5, "images[0].<<",
     "merge keys"),
    ("cache-repo-tag", HEAD + "  - source: a.example/x:1\n    cache_repo: m.example/cache:1\n", 5,
     "images[0].cache_repo", "without tag or digest"),
    ("registry-port-as-path", 'defaults:\n  dest: "localhost:5000/{registry}/{repository}:{tag}"\nimages:\n'
     "  - source: localhost:5001/a:1\n", 2, "defaults.dest", "not a valid reference"),
    ("blob-compression-unknown", HEAD + "  - source: a.example/x:1\n    blob_compression: gzip\n", 5,
     "images[0].blob_compression", "unknown compression 'gzip'"),
    ("blob-compression-level", "defaults:\n  blob_compression: zstd,level=23\n  dest: m.example/{repository}:{tag}\n"
     "images:\n  - source: a.example/x:1\n", 2, "defaults.blob_compression", "out of range"),
    ("chunk-size-odd", HEAD + "  - source: a.example/x:1\n    blob_compression: zstd\n    chunk_size: 1000\n", 6,
     "images[0].chunk_size", "multiple of 4K"),
    ("chunk-size-without-zstd", HEAD + "  - source: a.example/x:1\n    chunk_size: 1M\n", 5,
     "images[0].chunk_size", "needs --blob-compression zstd"),
    ("verity-not-bool", HEAD + "  - source: a.example/x:1\n    verity: yes please\n", 5, "images[0].verity",
     "want true or false"),
    ("verity-containerd", HEAD + "  - source: a.example/x:1\n    verity: true\n    profile: containerd-2.3\n", 4,
     "images[0]", "--verity needs --media-type-profile spec"),
    ("to-null", HEAD + "  - source: a.example/x:1\n    to:\n", 5, "images[0].to", "want a string"),
    ("stray-dollar", 'defaults:\n  dest: "m.example/$HOME/{repository}:{tag}"\nimages:\n'
     "  - source: a.example/x:1\n", 2, "defaults.dest", "${NAME}"),
]


@pytest.mark.parametrize(("text", "line", "field", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_errors(text: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(JobFileError) as err:
        parse_job(text, filename="jobs/x.yaml")
    assert (err.value.line, err.value.field) == (line, field), str(err.value)
    assert fragment in str(err.value)
    prefix = f"jobs/x.yaml:{line}: " + (f"{field}: " if field else "")
    assert str(err.value).startswith(prefix), str(err.value)


def test_newest_holds_only_a_few_candidates_while_tags_stream() -> None:
    def tags() -> Iterator[str]:
        for i in range(200_000):
            yield f"1.{i % 1000}.{i // 1000}-build-{i:08d}"
            yield "1.0.0"  # duplicates of a tag that is not among the newest

    tracemalloc.start()
    try:
        chosen = TagFilter(newest=3).select(tags())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chosen == ["1.999.199-build-00199999", "1.999.198-build-00198999", "1.999.197-build-00197999"]
    assert peak < 2 << 20, f"{peak} bytes held"  # all 200,000 tags would take about 20 MB
