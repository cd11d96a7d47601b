"""The CI templates (ci/gitlab-ci.yml, ci/github-actions.yml), checked without any CI: every command they run
exists and parses, their shards cover every cell of the matrix exactly once, they upload what the runs write, and
their cache key's inputs exist and are current. Each check returns a list of problems, so the same checks run on
the real templates (none) and on broken copies of them (each break found)."""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import importlib.machinery
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from xenfb_harness import cli
from xenfb_harness.config import ConfigError
from xenfb_harness.matrix import load_matrix, parse_shard, shard, times_from

ROOT = Path(__file__).resolve().parents[1]
GITLAB, GITHUB = ROOT / "ci/gitlab-ci.yml", ROOT / "ci/github-actions.yml"
_loader = importlib.machinery.SourceFileLoader("cache_key", str(ROOT / "ci/cache-key"))
cache_key = importlib.util.module_from_spec(importlib.util.spec_from_loader("cache_key", _loader))
_loader.exec_module(cache_key)

TOOLS = {"apt-get", "python3", "ls", "cp", "mkdir", "echo", "test", "cat", "true"}  # standard tools allowed
PYTHONS = {"python3", ".venv/bin/python"}
HARNESS = {"xenfb-harness", ".venv/bin/xenfb-harness"}
WRAPPERS = {"scripts/run-default": ["run", "configs/default.yaml"]}  # repo scripts that exec the harness
MERGE_WRITES = ("summary.json", "junit.xml", "report.html")  # harness/matrix.py write_reports
MATRIX_WRITES = MERGE_WRITES + ("cells", "hosts")  # and run_matrix's run directories
RUN_WRITES = ("result.json", "junit.xml", "report.html")  # harness/result.py, report_html.py
GLOB = re.compile(r"[*?\[]")


@dataclass
class Job:
    name: str
    variants: list  # one substitution dict per job instance (per shard)
    lines: list  # shell lines, with CI variables still in them
    uploads: list = field(default_factory=list)  # artifact paths
    names: list = field(default_factory=list)  # GitHub: the uploaded artifacts' names, beside `uploads`
    junit: list = field(default_factory=list)
    caches: list = field(default_factory=list)  # {"key_files": [...], "hash_patterns": [...], "paths": [...]}
    downloads: list = field(default_factory=list)  # GitHub: (pattern, path)
    needs: list = field(default_factory=list)


@dataclass
class Template:
    path: Path
    kind: str  # gitlab | github
    jobs: list
    cache_dir: str | None  # XENFB_HARNESS_CACHE relative to the project directory


def _list(x) -> list:
    return [] if x is None else x if isinstance(x, list) else [x]


def gitlab(data: dict) -> Template:
    reserved = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache"}
    default = data.get("default") or {}
    jobs = []
    for name, spec in data.items():
        if name in reserved or name.startswith(".") or not isinstance(spec, dict) or "script" not in spec:
            continue
        n = spec.get("parallel")
        variants = [{"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(n)} for i in range(1, n + 1)] \
            if isinstance(n, int) else [{}]
        art = spec.get("artifacts") or {}
        cache = spec.get("cache", default.get("cache"))
        caches = []
        for c in _list(cache):
            key = c.get("key")
            caches.append({"key_files": key.get("files", []) if isinstance(key, dict) else [],
                           "hash_patterns": [], "paths": _list(c.get("paths"))})
        jobs.append(Job(name, variants, _list(default.get("before_script")) + _list(spec.get("before_script"))
                        + _list(spec["script"]), uploads=_list(art.get("paths")),
                        junit=_list((art.get("reports") or {}).get("junit")), caches=caches,
                        needs=[n if isinstance(n, str) else n["job"] for n in _list(spec.get("needs"))]))
    cache_dir = (data.get("variables") or {}).get("XENFB_HARNESS_CACHE", "")
    m = re.fullmatch(r"\$\{?CI_PROJECT_DIR\}?/(.+)", cache_dir)
    return Template(GITLAB, "gitlab", jobs, m[1] if m else None)


def github(data: dict) -> Template:
    jobs, cache_dir = [], None
    for name, spec in data["jobs"].items():
        matrix = (spec.get("strategy") or {}).get("matrix") or {}
        axes = {k: v for k, v in matrix.items() if isinstance(v, list)}
        combos = list(itertools.product(*axes.values()))
        variants = [{**{f"matrix.{k}": str(v) for k, v in zip(axes, combo)},
                     "strategy.job-index": str(i), "strategy.job-total": str(len(combos))}
                    for i, combo in enumerate(combos)]
        job = Job(name, variants, [], needs=_list(spec.get("needs")))
        for step in spec.get("steps", []):
            uses, args = step.get("uses", ""), step.get("with") or {}
            if "run" in step:
                job.lines += [line for line in step["run"].splitlines() if line.strip()]
                m = re.search(r"XENFB_HARNESS_CACHE=\$\{?GITHUB_WORKSPACE\}?/([^\"' ]+)", step["run"])
                cache_dir = m[1] if m else cache_dir
            elif uses.startswith("actions/upload-artifact"):
                paths = [p.strip() for p in str(args.get("path", "")).splitlines() if p.strip()]
                job.uploads += paths
                job.names += [args.get("name", "artifact")] * len(paths)
            elif uses.startswith("actions/download-artifact"):
                job.downloads.append((args.get("pattern") or args.get("name") or "*", args.get("path", ".")))
            elif uses.startswith(("actions/cache@", "actions/cache/restore@")):
                patterns = [p for call in re.findall(r"hashFiles\(([^)]*)\)", args.get("key", ""))
                            for p in re.findall(r"'([^']*)'", call)]
                job.caches.append({"key_files": [], "hash_patterns": patterns,
                                   "paths": [p.strip() for p in str(args.get("path", "")).splitlines() if p.strip()]})
        jobs.append(job)
    return Template(GITHUB, "github", jobs, cache_dir)


def load(path: Path, mutate=None) -> Template:
    data = yaml.safe_load(path.read_text())
    if mutate:
        mutate(data)
    return gitlab(data) if path == GITLAB else github(data)


def sub(text: str, variant: dict) -> str:
    for k, v in variant.items():
        text = re.sub(r"\$\{\{\s*" + re.escape(k) + r"\s*\}\}", v, text)
        text = re.sub(r"\$\{" + re.escape(k) + r"\}|\$" + re.escape(k) + r"\b", v, text)
    return text


def commands(line: str) -> list[list[str]]:
    """A shell line's simple commands, each without its leading VAR=value words and its redirections."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur, skip = [], [], False
    for tok in lex:
        if skip:
            skip = False
        elif tok in ("&&", "||", ";", "|", "&"):
            out.append(cur)
            cur = []
        elif set(tok) <= set("<>&"):
            if cur and cur[-1].isdigit():
                cur.pop()  # 2>file
            skip = True
        elif tok.startswith("#") and not cur:
            break
        elif not cur and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tok):
            continue
        else:
            cur.append(tok)
    return [c for c in out + [cur] if c]


def harness_argv(argv: list[str]) -> list[str] | None:
    if argv[0] in HARNESS:
        return argv[1:]
    if argv[0] in WRAPPERS:
        return WRAPPERS[argv[0]] + argv[1:]
    return None


def parse(argv: list[str]):
    """(namespace, None) or (None, argparse's complaint)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.parser().parse_args(argv), None
    except SystemExit:
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "does not parse"


@dataclass
class Call:
    job: Job
    variant: dict
    line: str  # substituted
    argv: list  # the command's words, globs expanded against the matrix outputs
    args: object = None  # parsed harness arguments, or None
    error: str | None = None


def calls(t: Template) -> list[Call]:
    """Every command of every job instance. Harness arguments with shell globs (merge's shard directories) are
    expanded against the --output directories the template's matrix commands write."""
    raw = [(job, v, sub(line, v), argv) for job in t.jobs for v in job.variants or [{}] for line in job.lines
           for argv in commands(sub(line, v))]
    outputs = set()
    for _, _, _, argv in raw:
        h = harness_argv(argv)
        if h and h[0] == "matrix":
            ns, _ = parse(h)
            if ns and ns.output:
                outputs.add(os.path.normpath(ns.output))
    out = []
    for job, v, line, argv in raw:
        words = []
        for w in argv:
            matched = sorted(o for o in outputs if fnmatch.fnmatch(o, w)) if GLOB.search(w) else []
            words += matched or [w]
        call = Call(job, v, line, words)
        h = harness_argv(words)
        if h is not None:
            call.args, call.error = parse(h)
        out.append(call)
    return out


def _executable(rel: str) -> str | None:
    p = ROOT / rel
    return None if p.is_file() and os.access(p, os.X_OK) else f"{rel} is not an executable file in the repo"


# --- the checks ------------------------------------------------------------------------------------------------

def check_commands(t: Template) -> list[str]:
    """(a) Every command is a repo script, a harness call whose arguments parse and whose files exist, a Python
    script of the repo, or a standard tool on the list."""
    problems = []
    for c in calls(t):
        where = f"{t.path.name}: {c.job.name}: `{c.line}`"
        if "${{" in c.line or "$[[" in c.line:
            problems.append(f"{where}: an expression left unresolved")
        first = c.argv[0]
        if harness_argv(c.argv) is not None:
            if first in WRAPPERS and _executable(first):
                problems.append(f"{where}: {_executable(first)}")
            if c.error:
                problems.append(f"{where}: {c.error}")
                continue
            a = c.args
            files = [a.matrix, a.times, a.host] if a.command == "matrix" else \
                list(getattr(a, "config", None) or []) if a.command in ("run", "build") else []
            missing = [str(f) for f in files if f is not None and not (ROOT / f).is_file()]
            if missing:
                problems.append(f"{where}: no such file: {', '.join(missing)}")
            elif a.command == "matrix":
                try:
                    load_matrix(ROOT / a.matrix, a.host and ROOT / a.host)
                except ConfigError as e:
                    problems.append(f"{where}: {e}")
            if a.command == "merge":
                problems += [f"{where}: {d} matches no matrix --output of this template" for d in a.dirs
                             if GLOB.search(str(d))]
        elif first.startswith(("scripts/", "ci/", "./")):
            if _executable(first):
                problems.append(f"{where}: {_executable(first)}")
        elif first in PYTHONS:
            script = next((w for w in c.argv[1:] if not w.startswith("-")), None)
            if "-m" not in c.argv and "-c" not in c.argv and not (script and (ROOT / script).is_file()):
                problems.append(f"{where}: no such Python script in the repo: {script}")
        elif first not in TOOLS:
            problems.append(f"{where}: {first} is neither a repo script, the harness, nor a listed tool")
    return problems


def check_shards(t: Template) -> list[str]:
    """(b) The shards of every job that runs a matrix cover each cell exactly once."""
    problems, all_calls = [], calls(t)
    for job in t.jobs:
        runs = [c for c in all_calls if c.job is job and c.args is not None and c.args.command == "matrix"]
        for matrix_file in sorted({str(c.args.matrix) for c in runs}):
            mine = [c for c in runs if str(c.args.matrix) == matrix_file]
            where = f"{t.path.name}: {job.name}: {matrix_file}"
            try:
                cells = load_matrix(ROOT / matrix_file).cells
            except (ConfigError, OSError) as e:
                problems.append(f"{where}: {e}")
                continue
            ran = []
            for c in mine:
                if not c.args.shard:
                    ran += [x.id for x in cells]
                    continue
                try:
                    i, n = parse_shard(c.args.shard)
                    times = times_from(ROOT / c.args.times) if c.args.times else None
                except (ValueError, OSError, KeyError) as e:
                    problems.append(f"{where}: --shard {c.args.shard}: {e}")
                    continue
                ran += [x.id for x in shard(cells, i, n, times)]
            missing = [x.id for x in cells if x.id not in ran]
            twice = sorted({r for r in ran if ran.count(r) > 1})
            if missing:
                problems.append(f"{where}: cells no shard runs: {', '.join(missing)}")
            if twice:
                problems.append(f"{where}: cells run by more than one shard: {', '.join(twice)}")
    return problems


def _norm(p: str) -> str:
    return os.path.normpath(p.rstrip("/"))


def _covers(pattern: str, path: str) -> bool:
    pattern = _norm(pattern)
    return path == pattern or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")


def check_uploads(t: Template) -> list[str]:
    """(c) What is uploaded is what the runs write (the --output directories of matrix, merge and run, the files
    the harness writes in them, pytest's --junitxml), every output directory is uploaded, parallel jobs write
    distinct directories, and the merge gets every shard's directory."""
    problems, written, outputs = [], set(), {}  # outputs: (job name, variant index) -> [(command, dir)]
    all_calls = calls(t)
    for c in all_calls:
        for w in c.argv:
            if w.startswith("--junitxml="):
                written.add(_norm(w.split("=", 1)[1]))
        if c.args is not None and c.args.command in ("matrix", "merge", "run") and c.args.output:
            out = _norm(str(c.args.output))
            files = {"matrix": MATRIX_WRITES, "merge": MERGE_WRITES, "run": RUN_WRITES}[c.args.command]
            written |= {out} | {f"{out}/{f}" for f in files}
            outputs.setdefault((c.job.name, c.job.variants.index(c.variant) if c.variant else 0), []).append(
                (c.args.command, out))
    for job in t.jobs:
        shard_dirs = []
        for k, v in enumerate(job.variants or [{}]):
            where = f"{t.path.name}: {job.name}{f' {k + 1}/{len(job.variants)}' if len(job.variants) > 1 else ''}"
            uploads = [sub(u, v) for u in job.uploads]
            for u in uploads:
                if not any(_covers(u, w) for w in written):
                    problems.append(f"{where}: uploads {u}, which no command of the template writes")
            for j in (sub(x, v) for x in job.junit):
                if _norm(j) not in written or not j.endswith(".xml"):
                    problems.append(f"{where}: JUnit report {j} is not a junit file a command writes")
            for command, out in outputs.get((job.name, k), []):
                if not any(_covers(u, out) for u in uploads):
                    problems.append(f"{where}: {command} writes {out}, which is not uploaded")
                if command == "matrix":
                    shard_dirs.append(out)
        if len(shard_dirs) > 1 and len(set(shard_dirs)) < len(shard_dirs):
            problems.append(f"{t.path.name}: {job.name}: its parallel jobs write the same directory "
                            f"({', '.join(sorted(set(shard_dirs)))}): their artifacts would overwrite each other")
    shards = {(c.job.name, out) for c in all_calls if c.args is not None and c.args.command == "matrix"
              for out in [_norm(str(c.args.output))]}
    for c in all_calls:
        if c.args is None or c.args.command != "merge":
            continue
        where = f"{t.path.name}: {c.job.name}"
        dirs = {_norm(str(d)) for d in c.args.dirs}
        for job_name, out in sorted(shards):
            if out not in dirs:
                problems.append(f"{where}: merge leaves out shard output {out}")
            if job_name not in c.job.needs:
                problems.append(f"{where}: does not need {job_name}, so it does not get {out}")
            if t.kind == "github":  # download-artifact puts each artifact into PATH/NAME/
                src = next(j for j in t.jobs if j.name == job_name)
                landed = {_norm(os.path.join(path, sub(name, v))) for pattern, path in c.job.downloads
                          for v in src.variants or [{}] for name, u in zip(src.names, src.uploads)
                          if fnmatch.fnmatch(sub(name, v), pattern) and _covers(sub(u, v), out)}
                if out not in landed:
                    problems.append(f"{where}: no download-artifact step puts {out} where merge reads it "
                                    f"(lands at: {', '.join(sorted(landed)) or 'nothing'})")
    return problems


def check_cache(t: Template) -> list[str]:
    """(d) The cache key's input files exist, say what the artifacts are built from (ci/cache-key's INPUTS, the
    matrix and its base among them) and, for GitLab, ci/cache-inputs.lock is current; the cached path is
    XENFB_HARNESS_CACHE."""
    problems = []
    if t.cache_dir is None:
        problems.append(f"{t.path.name}: XENFB_HARNESS_CACHE is not set to a path inside the project directory")
    inputs, all_calls = set(cache_key.files(str(ROOT))), calls(t)
    for job in t.jobs:
        where = f"{t.path.name}: {job.name}"
        matrices = {str(c.args.matrix) for c in all_calls
                    if c.job is job and c.args is not None and c.args.command == "matrix"}
        for cache in job.caches:
            if t.cache_dir and _norm(t.cache_dir) not in {_norm(p) for p in cache["paths"]}:
                problems.append(f"{where}: caches {cache['paths']}, not XENFB_HARNESS_CACHE ({t.cache_dir})")
            if len(cache["key_files"]) > 2:
                problems.append(f"{where}: GitLab takes at most 2 files in cache:key:files")
            for f in cache["key_files"] + cache["hash_patterns"]:
                if not [p for p in glob.glob(str(ROOT / f), recursive=True) if os.path.isfile(p)]:
                    problems.append(f"{where}: cache key input {f} matches no file")
            if "ci/cache-inputs.lock" in cache["key_files"]:
                lock = ROOT / cache_key.LOCK
                if not lock.is_file() or lock.read_text() != cache_key.lock(str(ROOT)):
                    problems.append(f"{where}: ci/cache-inputs.lock is not current: run ci/cache-key --write")
            if cache["hash_patterns"] and set(cache["hash_patterns"]) != set(cache_key.INPUTS):
                problems.append(f"{where}: hashFiles patterns differ from ci/cache-key's INPUTS: "
                                f"{sorted(set(cache['hash_patterns']) ^ set(cache_key.INPUTS))}")
            if cache["key_files"] or cache["hash_patterns"]:
                for m in matrices:
                    used = [m] + ([os.path.relpath(load_matrix(ROOT / m).cells[0].cfg.source, ROOT)]
                                  if (ROOT / m).is_file() else [])
                    problems += [f"{where}: the cache key leaves out {u}, which the matrix reads" for u in used
                                 if u not in inputs and not u.startswith("(")]
        if matrices and not job.caches:
            problems.append(f"{where}: runs a matrix without an artifact cache")
    return problems


CHECKS = [check_commands, check_shards, check_uploads, check_cache]


# --- the real templates ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("path", [GITLAB, GITHUB], ids=lambda p: p.name)
def test_real_templates_have_no_problems(path, check):
    assert check(load(path)) == []


@pytest.mark.parametrize("path", [GITLAB, GITHUB], ids=lambda p: p.name)
def test_templates_run_the_matrix_in_shards_and_merge_them(path):
    t = load(path)
    matrix = [c for c in calls(t) if c.args is not None and c.args.command == "matrix"]
    merge = [c for c in calls(t) if c.args is not None and c.args.command == "merge"]
    assert sorted(c.args.shard for c in matrix) == ["1/2", "2/2"]
    assert len(merge) == 1 and sorted(map(str, merge[0].args.dirs)) == ["matrix-shard-1", "matrix-shard-2"]


def test_the_wrapper_the_checker_knows_is_what_the_script_runs():
    for script, argv in WRAPPERS.items():
        assert f"exec .venv/bin/xenfb-harness {' '.join(argv)} \"$@\"" in (ROOT / script).read_text()


def test_cache_key_is_a_hash_of_the_lock_and_the_lock_is_current():
    out = subprocess.run([str(ROOT / "ci/cache-key")], capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 1 and re.fullmatch(r"[0-9a-f]{64}", out[0])
    check = subprocess.run([str(ROOT / "ci/cache-key"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


# --- broken copies: each break is found ------------------------------------------------------------------------

def _gitlab_script(job: str, old: str, new: str):
    def mutate(d):
        d[job]["script"] = [line.replace(old, new) for line in d[job]["script"]]
    return mutate


def _github_run(job: str, old: str, new: str):
    def mutate(d):
        for step in d["jobs"][job]["steps"]:
            if "run" in step:
                step["run"] = step["run"].replace(old, new)
    return mutate


def _github_with(job: str, uses: str, key: str, fn):
    def mutate(d):
        for step in d["jobs"][job]["steps"]:
            if step.get("uses", "").startswith(uses):
                step["with"][key] = fn(step["with"][key])
    return mutate


def _set(path: list, value):
    def mutate(d):
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return mutate


def _both(*mutations):
    def mutate(d):
        for m in mutations:
            m(d)
    return mutate


BROKEN = {
    "gitlab: typo'd subcommand": (GITLAB, _gitlab_script("matrix", "xenfb-harness matrix", "xenfb-harness matrx"),
                                  check_commands, "invalid choice: 'matrx'"),
    "gitlab: unknown option": (GITLAB, _gitlab_script("matrix", "--shard", "--shards"), check_commands,
                               "unrecognized arguments"),
    "gitlab: missing repo script": (GITLAB, _gitlab_script("unit", "scripts/test", "scripts/tset"), check_commands,
                                    "scripts/tset is not an executable file"),
    "gitlab: missing matrix file": (GITLAB, _gitlab_script("matrix", "configs/matrix.yaml", "configs/matrx.yaml"),
                                    check_commands, "no such file: configs/matrx.yaml"),
    "gitlab: a tool not on the list": (GITLAB, _gitlab_script("merge", "scripts/install", "curl -O x"),
                                       check_commands, "curl is neither"),
    "github: unresolved expression": (GITHUB, _github_run("matrix", "matrix.shard }}/", "matrix.shards }}/"),
                                      check_commands, "unresolved"),
    "github: missing Python script": (GITHUB, _github_run("merge", "ci/summary-markdown.py", "ci/summary.py"),
                                      check_commands, "no such Python script"),
    "gitlab: parallel 3, shards of 2": (GITLAB, _both(_set(["matrix", "parallel"], 3), _gitlab_script(
        "matrix", "$CI_NODE_INDEX/$CI_NODE_TOTAL", "$CI_NODE_INDEX/2")), check_shards, "--shard 3/2"),
    "gitlab: parallel 3, shards of 4": (GITLAB, _both(_set(["matrix", "parallel"], 3), _gitlab_script(
        "matrix", "$CI_NODE_INDEX/$CI_NODE_TOTAL", "$CI_NODE_INDEX/4")), check_shards, "cells no shard runs"),
    "gitlab: parallel 2, shards of 3": (GITLAB, _gitlab_script("matrix", "$CI_NODE_INDEX/$CI_NODE_TOTAL",
                                                               "$CI_NODE_INDEX/3"), check_shards,
                                        "cells no shard runs"),
    "gitlab: the same shard everywhere": (GITLAB, _gitlab_script("matrix", "--shard $CI_NODE_INDEX/", "--shard 1/"),
                                          check_shards, "cells run by more than one shard"),
    "github: shard list misses one": (GITHUB, _github_run("matrix", "${{ strategy.job-total }}", "3"), check_shards,
                                      "cells no shard runs"),
    "gitlab: shards share one output": (GITLAB, _gitlab_script("matrix", "--output matrix-shard-$CI_NODE_INDEX",
                                                               "--output matrix-out"), check_uploads,
                                        "overwrite each other"),
    "gitlab: artifact path typo": (GITLAB, _set(["matrix", "artifacts", "paths"], ["matrix-shards-$CI_NODE_INDEX/"]),
                                   check_uploads, "uploads matrix-shards-1/, which no command"),
    "gitlab: junit path typo": (GITLAB, _set(["merge", "artifacts", "reports", "junit"], "matrix-all/junit.xm"),
                                check_uploads, "JUnit report matrix-all/junit.xm"),
    "gitlab: merge misses a shard": (GITLAB, _gitlab_script("merge", "matrix-shard-*", "matrix-shard-1"),
                                     check_uploads, "merge leaves out shard output matrix-shard-2"),
    "gitlab: merge does not need the shards": (GITLAB, _set(["merge", "needs"], []), check_uploads,
                                               "does not need matrix"),
    "github: output not uploaded": (GITHUB, _github_with("matrix", "actions/upload-artifact", "path",
                                                         lambda p: "matrix-out/"), check_uploads, "not uploaded"),
    "github: download lands elsewhere": (GITHUB, _github_with("merge", "actions/download-artifact", "path",
                                                              lambda p: "shards"), check_uploads,
                                         "lands at: shards/matrix-shard-1"),
    "gitlab: cache key file missing": (GITLAB, _set(["matrix", "cache", "key", "files"], ["ci/nope.lock"]),
                                       check_cache, "ci/nope.lock matches no file"),
    "gitlab: three cache key files": (GITLAB, _set(["matrix", "cache", "key", "files"],
                                                   ["ci/cache-inputs.lock", "pyproject.toml", "README.md"]),
                                      check_cache, "at most 2 files"),
    "gitlab: cache path not the harness cache": (GITLAB, _set(["matrix", "cache", "paths"], [".cache"]), check_cache,
                                                 "not XENFB_HARNESS_CACHE"),
    "github: hashFiles leaves out an input": (GITHUB, _github_with("matrix", "actions/cache/restore", "key",
                                                                   lambda k: k.replace(", 'guest-kernels/**'", "")),
                                              check_cache, "differ from ci/cache-key's INPUTS"),
    "github: hashFiles pattern that matches nothing": (GITHUB, _github_with(
        "matrix", "actions/cache/restore", "key", lambda k: k.replace("'harness/writer/*.c'", "'harness/writer/*.h'")),
        check_cache, "harness/writer/*.h matches no file"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_template_is_caught(name):
    path, mutate, check, expected = BROKEN[name]
    problems = check(load(path, mutate))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("path,mutate", [
    (GITLAB, _set(["matrix", "parallel"], 3)),
    (GITHUB, _set(["jobs", "matrix", "strategy", "matrix", "shard"], [1, 2, 3])),
], ids=["gitlab", "github"])
def test_more_shards_need_only_the_number_changed(path, mutate):
    t = load(path, mutate)
    assert check_shards(t) == [] and check_uploads(t) == [] and check_commands(t) == []
    assert sorted(c.args.shard for c in calls(t) if c.args is not None and c.args.command == "matrix") == \
        ["1/3", "2/3", "3/3"]


def test_a_stale_lock_and_a_new_input_are_caught(monkeypatch):
    monkeypatch.setattr(cache_key, "INPUTS", cache_key.INPUTS + ["README.md"])
    assert any("ci/cache-inputs.lock is not current" in p for p in check_cache(load(GITLAB)))
    assert any("differ from ci/cache-key's INPUTS" in p for p in check_cache(load(GITHUB)))


def test_a_matrix_base_left_out_of_the_cache_key_is_caught(monkeypatch):
    monkeypatch.setattr(cache_key, "INPUTS", [i for i in cache_key.INPUTS if i != "configs/default.yaml"])
    assert any("leaves out configs/default.yaml" in p for p in check_cache(load(GITLAB)))


def test_merge_writes_what_the_checker_expects_and_the_summary_renders(tmp_path):
    """Two shard outputs as `matrix` leaves them (without running any cell), merged for real."""
    from xenfb_harness.matrix import cell_entry, merge, new_summary, write_reports
    m = load_matrix(ROOT / "configs/matrix.yaml")
    for i in (1, 2):
        cells = shard(m.cells, i, 2)
        entries = [cell_entry(c, {"verdict": c.expected, "reason": "made up"}, f"cells/{c.slug}") for c in cells]
        (tmp_path / f"matrix-shard-{i}").mkdir()
        write_reports(tmp_path / f"matrix-shard-{i}", new_summary(m, f"{i}/2", entries, "now", 1.0))
    merge([tmp_path / "matrix-shard-1", tmp_path / "matrix-shard-2"], tmp_path / "matrix-all")
    assert all((tmp_path / "matrix-all" / f).is_file() for f in MERGE_WRITES)
    out = subprocess.run([sys.executable, str(ROOT / "ci/summary-markdown.py"),
                          str(tmp_path / "matrix-all/summary.json")], capture_output=True, text=True, check=True).stdout
    assert f"{len(m.cells)} of {len(m.cells)} cells green" in out
    assert "| legacy-race | ✅ FAIL (expected FAIL) | ✅ FAIL (expected FAIL) |" in out


# --- the job summary -------------------------------------------------------------------------------------------

def test_summary_markdown_shows_the_grid_and_why_cells_are_red(tmp_path):
    cells = [{"id": f"frontend={f},writer={w}", "values": {"frontend": f, "writer": w}, "expected": e,
              "verdict": v, "ok": e == v, "why_red": "" if e == v else f"expected {e}, got {v}: boom",
              "run_dir": f"cells/{f}-{w}"}
             for f, w, e, v in [("upstream", "mmap", "PASS", "PASS"), ("legacy", "mmap", "FAIL", "FAIL"),
                                ("upstream", "xorg", "PASS", "ERROR")]]
    summary = {"name": "m", "axes": {"frontend": ["upstream", "legacy"], "writer": ["mmap", "xorg"]},
               "cells": cells, "totals": {"cells": 3, "green": 2, "red": 1, "PASS": 1, "FAIL": 1, "ERROR": 1}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = subprocess.run([sys.executable, str(ROOT / "ci/summary-markdown.py"), str(tmp_path / "summary.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "## Matrix m: RED" in out and "2 of 3 cells green, 1 red" in out
    assert "| frontend | writer=mmap | writer=xorg |" in out
    assert "| upstream | ✅ PASS (expected PASS) | ❌ ERROR (expected PASS) |" in out
    assert "| legacy | ✅ FAIL (expected FAIL) | – |" in out  # excluded cell
    assert "`frontend=upstream,writer=xorg`: expected PASS, got ERROR: boom" in out
