"""Pure builders of the commit status and check run bodies from a commit's verdict; no I/O."""

from __future__ import annotations

from typing import Any

from app import advisories
from app.models import SEVERITIES
from app.policy import CONTEXT, CommitVerdict

# One dict maps our verdict onto GitHub's vocabularies (commit status state, check run conclusion).
STATES = {"success": ("success", "success"), "failure": ("failure", "failure")}
SUMMARY_LIMIT = 65_535
TOP_FINDINGS = 5


def commit_status(verdict: CommitVerdict, target_url: str | None) -> dict[str, Any]:
    state, _ = STATES[verdict.state]
    body: dict[str, Any] = {"state": state, "description": verdict.description, "context": CONTEXT}
    if target_url:
        body["target_url"] = target_url
    return body


def check_run(verdict: CommitVerdict, head_sha: str, details_url: str | None, external_id: str) -> dict[str, Any]:
    _, conclusion = STATES[verdict.state]
    body: dict[str, Any] = {
        "name": CONTEXT,
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": conclusion,
        "external_id": external_id,
        "output": {"title": verdict.description, "summary": summary(verdict)},
    }
    if details_url:
        body["details_url"] = details_url
    return body


def summary(verdict: CommitVerdict) -> str:
    """Markdown: per image its verdict, severity counts, fixable count and top findings; within 65,535 chars."""
    lines = [f"**{verdict.description}** (policy: `{verdict.block_action}`)", ""]
    for image in verdict.images:
        mark = "❌" if image.status == "failure" else "✅"
        lines += [f"### {mark} `{image.image_ref}`", ""]
        lines += ["| " + " | ".join(s.capitalize() for s in SEVERITIES) + " | Fixable |"]
        lines += ["|" + "---:|" * (len(SEVERITIES) + 1)]
        lines += ["| " + " | ".join(str(image.counts[s]) for s in SEVERITIES) + f" | {image.fixable} |", ""]
        for f in image.top_findings[:TOP_FINDINGS]:
            ids = advisories.links(f["cve_id"], f.get("vendor_ids") or (), f.get("references") or ())
            name = f"[{f['cve_id']}]({ids[0][1]})" if ids else f["cve_id"]
            fix = f" → {f['fixed_version']}" if f.get("fixed_version") else ""
            lines.append(f"- **{f['severity']}** {name} in `{f['package']}` {f['installed_version']}{fix}")
        lines.append("")
    text = "\n".join(lines)
    if len(text) > SUMMARY_LIMIT:
        cut = "\n\n… (truncated; see the details page for every image)"
        text = text[: SUMMARY_LIMIT - len(cut)] + cut
    return text
