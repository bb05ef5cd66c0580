"""`webslm check DIST --model MODEL`: does the browser model still compute what the model computes?

DIST runs in headless Chromium with the app's web-llm (web/check.html: the app's record handling,
guards and engine worker, plus a recorder of each step's logits) on WebGPU — the machine's GPU
when Chromium offers one, else the CPU SwiftShader adapter. It decodes greedily a fixed number
of tokens for each prompt. MODEL then runs in transformers (CPU, float32, safetensors, never
remote code) on the same token ids, the prompt formatted exactly as the dist's conv_template
formats it, and the two are compared position by position: greedy token, top-5 overlap,
|Δ log-prob| over the whole vocabulary and KL(model ‖ browser).

The same comparison is made again with MODEL's weights replaced by the dist's own dequantized
weights: the quantization's expected error drops out and what is left is the compiler's and
runtime's. Tolerances per quantization (TOLERANCES) were measured on the real-tiny fixture.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from webslm import chromium
from webslm.checkout import checkout_path
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import atomic_write_text, canonical_json
from webslm.hub import check_model_folder, resolve_model
from webslm.layout import APP_CONFIG_FILE, CHAT_CONFIG_FILE, WEIGHTS_MANIFEST
from webslm.mlcweights import dequantized_params, to_transformers_names
from webslm.serve import (
    ServedModel,
    Site,
    ensure_web_bundle,
    model_url_path,
    serving_in_thread,
)
from webslm.spec import resolve_spec
from webslm.webllm import REBUILD, ChatConfig, read_app_config, read_chat_config

TOKENIZER = "tokenizer.json"
DIST_FIX = "pass a dist folder made by `webslm build`"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
RUNNER = checkout_path("web", "check-run.mjs")
NEW_TOKENS = 16
TOP_K = 5
BROWSER_TIMEOUT_S = 1800  # larger models load and decode slowly on SwiftShader
DEFAULT_PROMPTS = (
    "What can you help me with?",
    "Explain photosynthesis in one sentence.",
    "Write a short poem about the sea.",
    "List three prime numbers and say why they are prime.",
)


@dataclass(frozen=True)
class Tolerance:
    """Limits for one quantization: against the original model (the quantization's error) and
    against the dist's dequantized weights (compiler and runtime error)."""

    min_greedy_agreement: float
    min_top5_mean: float
    max_kl: float
    max_runtime_abs_logprob: float
    max_runtime_kl: float


# Measured on real-tiny (docs/check.md, "Where the tolerances come from"), 4 prompts x 16 steps.
# Against the model:
# greedy 64/64, top-5 overlap mean 3.83 (q4f32_1 in the browser; 3.86 for q4f16_1 in transformers),
# KL <= 3.6e-4; the same dist against a model with other weights (seed 1): top-5 overlap 1.0, KL
# 0.026 -- a random tiny model's near-flat distribution keeps KL small, so top-5 overlap is what
# separates the two there. Against the dist's weights: |Δ log-prob| 8.4e-7 and KL 3e-14
# (q4f32_1, SwiftShader). q4f16_1 computes in float16; SwiftShader has no shader-f16, so its
# runtime limit comes from transformers in float16 against float32 on the same weights (|Δ| 5e-4,
# KL 6e-9 on real-tiny) with room for deeper models. The limits against the model leave room for
# a real model's quantization error (4-bit flips some near-tied top-1 tokens and moves the tail),
# which could not be measured here (no Hub access); a model with other weights is far outside.
TOLERANCES = {
    "q4f32_1": Tolerance(min_greedy_agreement=0.75, min_top5_mean=3.0, max_kl=0.5,
                         max_runtime_abs_logprob=1e-3, max_runtime_kl=1e-5),
    "q4f16_1": Tolerance(min_greedy_agreement=0.75, min_top5_mean=3.0, max_kl=0.5,
                         max_runtime_abs_logprob=0.05, max_runtime_kl=1e-3),
}


# ---------------------------------------------------------------------------- the dist's prompt


def js_replace(template: str, placeholder: str, value: str) -> str:
    """JavaScript's String.replace(string, string): the first occurrence, `$` patterns expanded
    (web-llm formats prompts with it, so a `$&` in a prompt means what it means there)."""
    at = template.find(placeholder)
    if at < 0:
        return template
    out, i = [], 0
    while i < len(value):
        pair = value[i:i + 2]
        expanded = {"$$": "$", "$&": placeholder, "$`": template[:at],
                    "$'": template[at + len(placeholder):]}.get(pair)
        out.append(expanded if expanded is not None else value[i])
        i += 2 if expanded is not None else 1
    return template[:at] + "".join(out) + template[at + len(placeholder):]


def prompt_pieces(conv_template: Mapping[str, Any], user_message: str) -> list[str]:
    """The strings web-llm 0.2.79 encodes (each on its own) for a one-message conversation.

    Mirrors Conversation.getPromptArray: the system template with the default system message,
    the user's turn (role, content separator, role template, separator), the assistant's header.
    """
    system = js_replace(conv_template["system_template"], "{system_message}",
                        conv_template.get("system_message", ""))
    roles = conv_template["roles"]
    content_sep = conv_template.get("role_content_sep")
    empty_sep = conv_template.get("role_empty_sep")
    content_sep = ": " if content_sep is None else content_sep
    empty_sep = ": " if empty_sep is None else empty_sep
    template = (conv_template.get("role_templates") or {}).get("user")
    message = js_replace(template, "{user_message}", user_message) if template else user_message
    message = message.replace("{function_string}", "", 1)
    first_role = conv_template.get("add_role_after_system_message") is False and system
    user = ("" if first_role else roles["user"] + content_sep) + message + conv_template["seps"][0]
    return [p for p in (system, user, roles["assistant"] + empty_sep) if p]


def prompt_token_ids(tokenizer_file: Path, pieces: Sequence[str]) -> list[int]:
    """Token ids of the prompt, each piece encoded separately as web-llm does."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False).ids]


# ---------------------------------------------------------------------------- the browser


@dataclass(frozen=True)
class Generation:
    """One prompt's greedy decode in the browser, with the logits of every step."""

    prompt: str
    text: str
    prompt_tokens: int
    tokens: tuple[int, ...]
    logits: np.ndarray  # [steps, vocab], raw
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass(frozen=True)
class BrowserRun:
    model_id: str
    adapter: str
    webllm: str
    generations: tuple[Generation, ...]

    @property
    def prefill_tokens_per_s(self) -> float:
        return _overall_rate([(g.prompt_tokens, g.prefill_tokens_per_s) for g in self.generations])

    @property
    def decode_tokens_per_s(self) -> float:
        return _overall_rate([(len(g.tokens), g.decode_tokens_per_s) for g in self.generations])


def _overall_rate(parts: Sequence[tuple[int, float]]) -> float:
    """Tokens per second over all prompts: total tokens over total time."""
    seconds = sum(tokens / rate for tokens, rate in parts if rate > 0)
    return sum(tokens for tokens, _ in parts) / seconds if seconds else 0.0


@contextmanager
def serving(dist: Path) -> Iterator[tuple[str, str]]:
    """The web client and DIST on a free 127.0.0.1 port: (URL of check.html, AppConfig path)."""
    model = ServedModel(name=dist.resolve().name, folder=dist.resolve())
    with serving_in_thread(Site(web=ensure_web_bundle(), models=(model,))) as server:
        yield server.url + "check.html", model_url_path(model.name, APP_CONFIG_FILE)


def run_in_browser(dist: Path, prompts: Sequence[str], new_tokens: int = NEW_TOKENS) -> BrowserRun:
    """Greedy decodes of DIST in headless Chromium, with every step's logits."""
    with serving(dist) as (page_url, config_path):
        request = {"config": config_path, "prompts": list(prompts), "maxTokens": new_tokens}
        try:
            done = subprocess.run(["node", str(RUNNER), page_url], input=json.dumps(request),
                                  capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                                  check=False,
                                  env={**os.environ, "CHROMIUM": str(chromium.CHROMIUM)})
        except subprocess.TimeoutExpired as error:
            raise StageFailed(f"the browser did not finish within {BROWSER_TIMEOUT_S} s",
                              "try fewer or shorter prompts") from error
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StageFailed(f"the browser run failed: {lines[-1] if lines else '?'}",
                          "open the dist with `webslm serve` to see the error in the page")
    answer = json.loads(done.stdout)
    if "refused" in answer:
        refusal = answer["refused"]
        if "WebGPU" in refusal:
            raise MissingEnvironment(refusal, "run the check on a machine whose GPU offers it")
        raise BadInput(refusal, "")
    return BrowserRun(
        model_id=answer["model_id"], adapter=answer["adapter"], webllm=answer["webllm"],
        generations=tuple(
            Generation(prompt=r["prompt"], text=r["text"], prompt_tokens=r["prompt_tokens"],
                       tokens=tuple(r["tokens"]),
                       logits=np.frombuffer(base64.b64decode(r["logits"]), dtype="<f4")
                       .reshape(len(r["tokens"]), r["vocab"]),
                       prefill_tokens_per_s=r["prefill_tokens_per_s"],
                       decode_tokens_per_s=r["decode_tokens_per_s"])
            for r in answer["results"]))


# ---------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """Browser against a reference over all prompts' teacher-forced positions."""

    reference: str
    positions: int
    greedy_agreement: int
    top5_min: int
    top5_mean: float
    max_abs_logprob: float
    mean_abs_logprob: float
    max_kl: float

    @property
    def greedy_fraction(self) -> float:
        return self.greedy_agreement / self.positions if self.positions else 0.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(reference: str, pairs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[int]]]
            ) -> Comparison:
    """Figures over (browser logits, reference logits, browser tokens) for each prompt."""
    greedy, overlaps, abs_diffs, kls = 0, [], [], []
    for browser, ours, tokens in pairs:
        vocab = min(browser.shape[-1], ours.shape[-1])
        lp_b, lp_r = log_softmax(browser[:, :vocab]), log_softmax(ours[:, :vocab])
        greedy += int((lp_r.argmax(axis=-1) == np.asarray(tokens)).sum())
        top_b = np.argsort(-lp_b, axis=-1)[:, :TOP_K]
        top_r = np.argsort(-lp_r, axis=-1)[:, :TOP_K]
        overlaps += [len(set(b) & set(r)) for b, r in zip(top_b, top_r, strict=True)]
        abs_diffs.append(np.abs(lp_b - lp_r))
        kls += list((np.exp(lp_r) * (lp_r - lp_b)).sum(axis=-1))
    diffs = np.concatenate(abs_diffs) if abs_diffs else np.zeros((0, 1))
    return Comparison(reference=reference, positions=len(overlaps), greedy_agreement=greedy,
                      top5_min=min(overlaps, default=0),
                      top5_mean=float(np.mean(overlaps)) if overlaps else 0.0,
                      max_abs_logprob=float(diffs.max(initial=0.0)),
                      mean_abs_logprob=float(diffs.mean()) if diffs.size else 0.0,
                      max_kl=float(max(max(kls, default=0.0), 0.0)))


def resolve_model_folder(model: str) -> Path:
    """A local model folder, or a Hub model downloaded (safetensors only)."""
    if Path(model).is_dir():
        check_model_folder(Path(model))
        return Path(model)
    return resolve_model(resolve_spec(model=model)).path


def load_reference(folder: Path) -> Any:
    """The model in transformers: CPU, float32, safetensors only, no code from the repo."""
    logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise BadInput(f"transformers cannot load {folder}: {str(error).splitlines()[0]}",
                       "pass a model folder with config.json and safetensors weights") from error
    return model.eval()


def teacher_forced_logits(model: Any, prompt_ids: Sequence[int], tokens: Sequence[int]
                          ) -> np.ndarray:
    """The model's logits at each position where the browser picked a token."""
    ids = torch.tensor([list(prompt_ids) + list(tokens)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    start = len(prompt_ids) - 1
    return logits[start:start + len(tokens)].float().numpy()


def load_dist_weights(model: Any, dist: Path, quantization: str) -> None:
    """Replace the model's weights with the dist's own, dequantized (in place)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    weights = to_transformers_names(dequantized_params(dist, quantization), shapes)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(weights[name].astype(np.float32)))


# ---------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class CheckReport:
    dist: str
    model: str
    model_id: str
    quantization: str
    adapter: str
    webllm: str
    prompts: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    against_model: Comparison
    against_dist_weights: Comparison | None
    dist_weights_note: str
    tolerance: Tolerance
    problems: tuple[str, ...]
    replies: tuple[tuple[str, str], ...]  # (prompt, the browser's greedy reply)

    @property
    def ok(self) -> bool:
        return not self.problems


def out_of_tolerance(model: Comparison, runtime: Comparison | None, limit: Tolerance
                     ) -> tuple[str, ...]:
    problems = []
    if model.greedy_fraction < limit.min_greedy_agreement:
        problems.append(f"greedy tokens agree {model.greedy_agreement}/{model.positions} "
                        f"(< {limit.min_greedy_agreement:.0%}) with the model")
    if model.top5_mean < limit.min_top5_mean:
        problems.append(f"top-5 tokens overlap {model.top5_mean:.2f} of 5 on average "
                        f"(< {limit.min_top5_mean:g}) with the model")
    if model.max_kl > limit.max_kl:
        problems.append(f"KL to the model {model.max_kl:.3g} > {limit.max_kl:g}")
    if runtime is not None:
        if runtime.max_abs_logprob > limit.max_runtime_abs_logprob:
            problems.append(f"|Δ log-prob| to the dist's own weights {runtime.max_abs_logprob:.3g}"
                            f" > {limit.max_runtime_abs_logprob:g}")
        if runtime.max_kl > limit.max_runtime_kl:
            problems.append(f"KL to the dist's own weights {runtime.max_kl:.3g} > "
                            f"{limit.max_runtime_kl:g}")
    return tuple(problems)


def read_prompts(path: Path | None) -> tuple[str, ...]:
    """The default prompts, or one prompt per non-empty line of FILE."""
    if path is None:
        return DEFAULT_PROMPTS
    try:
        prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"cannot read prompts from {path} ({error})",
                       "pass a UTF-8 text file, one prompt per line") from error
    if not prompts:
        raise BadInput(f"{path} holds no prompt", "write one prompt per line")
    return prompts


def checked_dist(dist: Path) -> tuple[ChatConfig, str]:
    """The dist's chat config and quantization, after checking every file the check reads."""
    if not dist.is_dir():
        raise BadInput(f"{dist} is not a folder", DIST_FIX)
    chat_config = read_chat_config(dist / CHAT_CONFIG_FILE, DIST_FIX)
    app_config = read_app_config(dist / APP_CONFIG_FILE, DIST_FIX)
    missing = [name for name in (TOKENIZER, WEIGHTS_MANIFEST) if not (dist / name).is_file()]
    for record in app_config.records:
        library = record.library_path_in_folder()
        if library is not None and not (dist / library).is_file():
            missing.append(library)
    if missing:
        raise BadInput(f"{dist} lacks {', '.join(missing)}", REBUILD)
    quantization = chat_config.quantization
    if quantization not in TOLERANCES:
        raise BadInput(f"no measured tolerance for {quantization or 'this'} quantization",
                       f"webslm check supports {', '.join(TOLERANCES)}")
    return chat_config, quantization


def run_check(dist: Path, model: str, prompts: Sequence[str],
              new_tokens: int = NEW_TOKENS) -> CheckReport:
    """Browser against transformers, with the original and with the dist's weights."""
    chat_config, quantization = checked_dist(dist)
    missing = chromium.browser_missing()
    if missing:
        raise missing
    folder = resolve_model_folder(model)
    prompt_ids = [prompt_token_ids(dist / TOKENIZER, prompt_pieces(chat_config.conv_template, p))
                  for p in prompts]
    reference = load_reference(folder)
    run = run_in_browser(dist, prompts, new_tokens)
    for ids, generation in zip(prompt_ids, run.generations, strict=True):
        if len(ids) != generation.prompt_tokens:
            raise StageFailed(f"the browser's prompt has {generation.prompt_tokens} tokens, webslm "
                              f"formats {len(ids)} for {generation.prompt!r}",
                              "report this: the conv_template formatting differs from web-llm's")

    def against(name: str) -> Comparison:
        return compare(name, [(g.logits, teacher_forced_logits(reference, ids, g.tokens), g.tokens)
                              for ids, g in zip(prompt_ids, run.generations, strict=True)])

    against_model = against("model (float32)")
    try:
        load_dist_weights(reference, dist, quantization)
        runtime, note = against("dist's dequantized weights"), ""
    except BadInput as error:
        runtime, note = None, f"not compared: {error.what}"
    tolerance = TOLERANCES[quantization]
    return CheckReport(
        dist=str(dist), model=model, model_id=run.model_id, quantization=quantization,
        adapter=run.adapter, webllm=run.webllm, prompts=len(prompts), new_tokens=new_tokens,
        prefill_tokens_per_s=run.prefill_tokens_per_s,
        decode_tokens_per_s=run.decode_tokens_per_s, against_model=against_model,
        against_dist_weights=runtime, dist_weights_note=note, tolerance=tolerance,
        problems=out_of_tolerance(against_model, runtime, tolerance),
        replies=tuple((g.prompt, g.text) for g in run.generations))


# ---------------------------------------------------------------------------- output


TABLE_HEADER = ("browser against", "greedy agrees", "top-5 overlap", "max |Δ log-prob|",
                "mean |Δ log-prob|", "max KL")


def table_rows(report: CheckReport) -> list[list[str]]:
    rows = []
    for c in (report.against_model, report.against_dist_weights):
        if c is not None:
            rows.append([c.reference, f"{c.greedy_agreement}/{c.positions}",
                         f"min {c.top5_min}, mean {c.top5_mean:.2f}", f"{c.max_abs_logprob:.2g}",
                         f"{c.mean_abs_logprob:.2g}", f"{c.max_kl:.2g}"])
    return rows


def summary(report: CheckReport) -> str:
    verdict = ("within" if report.ok else "OUTSIDE") + f" the {report.quantization} tolerance"
    return (f"{report.model_id} in web-llm {report.webllm} on {report.adapter} against "
            f"{report.model}: {verdict}")


def speed(report: CheckReport) -> str:
    return (f"browser: prefill {report.prefill_tokens_per_s:.0f} tok/s, decode "
            f"{report.decode_tokens_per_s:.1f} tok/s ({report.prompts} prompts, "
            f"{report.new_tokens} greedy tokens each)")


def render_text(report: CheckReport) -> str:
    rows = [list(TABLE_HEADER), *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [summary(report), ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    if report.dist_weights_note:
        lines.append(f"dist's dequantized weights: {report.dist_weights_note}")
    lines += ["", speed(report)]
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


def report_json(report: CheckReport) -> dict[str, Any]:
    data = asdict(report)
    data["ok"] = report.ok
    return data


def cell(text: str) -> str:
    """Text as one Markdown table cell: quoted and escaped, pipes escaped."""
    return json.dumps(text).replace("|", "\\|")


def report_markdown(report: CheckReport) -> str:
    mark = "✅" if report.ok else "❌"
    lines = [f"# webslm check: {mark} {summary(report)}", "",
             f"- dist: `{report.dist}` ({report.quantization})", f"- model: `{report.model}`",
             f"- {speed(report)}", "",
             "| " + " | ".join(h.replace("|", "\\|") for h in TABLE_HEADER) + " |",
             "|" + " --- |" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    if report.dist_weights_note:
        lines += ["", f"Dist's dequantized weights: {report.dist_weights_note}."]
    limit = report.tolerance
    lines += ["", f"Tolerance for {report.quantization}: greedy agreement ≥ "
              f"{limit.min_greedy_agreement:.0%}, mean top-5 overlap ≥ {limit.min_top5_mean:g} "
              f"and KL ≤ {limit.max_kl:g} against the model; "
              f"|Δ log-prob| ≤ {limit.max_runtime_abs_logprob:g} and KL ≤ "
              f"{limit.max_runtime_kl:g} against the dist's own weights."]
    lines += [f"- ❌ {p}" for p in report.problems]
    lines += ["", "## The browser's greedy replies", "", "| prompt | reply |", "| --- | --- |"]
    lines += [f"| {cell(prompt)} | {cell(reply)} |" for prompt, reply in report.replies]
    return "\n".join(lines) + "\n"


def write_report(report: CheckReport, folder: Path) -> None:
    """report.json and report.md, each written whole."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / REPORT_JSON, canonical_json(report_json(report)))
    atomic_write_text(folder / REPORT_MARKDOWN, report_markdown(report))


def check_command(dist: Path, model: str, prompts_file: Path | None = None,
                  report_dir: Path | None = None) -> int:
    """Print the table; exit 0 inside the tolerance, 1 outside."""
    report = run_check(dist, model, read_prompts(prompts_file))
    print(render_text(report), end="")
    if report_dir is not None:
        write_report(report, report_dir)
    return 0 if report.ok else 1
