"""The shapes of values every part of the app checks alike: commit SHAs, repository names, git refs, image names,
32-bit ids.

One source for the API's schemas, the admin pages' filters, the webhook handlers and the OpenAPI document.
"""

from __future__ import annotations

import re

MAX_INT32 = 2**31 - 1  # ids and PR numbers are 32-bit columns: a larger one names nothing
MAX_INT64 = 2**63 - 1  # findings' ids (64-bit on PostgreSQL)
COMMIT_SHA = r"^[0-9a-fA-F]{40}$"  # as the API accepts it (stored in lower case)
SHA = re.compile(r"[0-9a-f]{40}")  # a commit SHA as GitHub sends it and as it is stored
COMMIT_SHA_TEXT = "must be a full commit SHA: 40 hexadecimal characters"
# GitHub's naming rules. Owner: letters, digits and single hyphens, neither first nor last, at most 39 characters;
# name: letters, digits, '.', '-' and '_', at most 100 characters, never '.' or '..'. The server checks them all
# (_REPO_RULE); the pattern in the OpenAPI document has no lookahead, so it leaves the owner's length to its text.
REPO_FULL_NAME = (
    r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*/"
    r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,98}|\.\.[A-Za-z0-9._-]{1,98})$"
)
_REPO_RULE = re.compile(r"(?=[A-Za-z0-9-]{1,39}/)" + REPO_FULL_NAME[1:-1])
REPO_RULE_TEXT = (
    "must be owner/name as GitHub allows them: the owner of letters, digits and single hyphens (not first or last), "
    "at most 39 characters; the name of letters, digits, '.', '-' and '_', at most 100 characters, not '.' or '..'"
)


def is_repo_full_name(value: str) -> bool:
    """Whether `value` is owner/name as GitHub allows them."""
    return _REPO_RULE.fullmatch(value) is not None


# A git ref as GitHub Actions gives it ($GITHUB_REF: refs/heads/main, refs/pull/42/merge, refs/tags/v1): refs/, then
# no white space, control character, ~ ^ : ? * [ \\ or "..", at most 255 characters.
GIT_REF = r"^refs/[^\x00-\x20~^:?*\[\\\x7f]+$"  # and no "..": is_git_ref
GIT_REF_MAX = 255
GIT_REF_TEXT = "must be a git ref such as refs/heads/main ($GITHUB_REF): refs/..., at most 255 characters"
_GIT_REF_RULE = re.compile(GIT_REF)


def is_git_ref(value: str) -> bool:
    """Whether `value` is a git ref by the rule above (a pattern, and no "..")."""
    return len(value) <= GIT_REF_MAX and ".." not in value and _GIT_REF_RULE.fullmatch(value) is not None


_DIGEST = re.compile(r"@[A-Za-z0-9_+.-]+:[0-9A-Fa-f]+$")
_TAG = re.compile(r":[\w][\w.-]{0,127}$")


def image_name(image_ref: str) -> str:
    """An image reference without its tag and digest: ghcr.io/acme/api:1.2@sha256:… -> ghcr.io/acme/api.

    A registry's port stays (localhost:5000/api:1 -> localhost:5000/api): a tag follows the last slash."""
    name = _DIGEST.sub("", image_ref.strip())
    head, slash, last = name.rpartition("/")
    return head + slash + _TAG.sub("", last)
