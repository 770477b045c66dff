"""
Local bare git repositories that look like a forge: pull request heads under
`refs/pull/<n>/head` (GitHub) and `refs/merge-requests/<n>/head` (GitLab).

Built with the git CLI in a temporary directory; the tests' own setup, so the
blocking `subprocess.run` is fine here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from attrs import define

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Prevu Test",
    "GIT_AUTHOR_EMAIL": "test@prevu.invalid",
    "GIT_COMMITTER_NAME": "Prevu Test",
    "GIT_COMMITTER_EMAIL": "test@prevu.invalid",
    "LC_ALL": "C",
}


def git(*args: str, cwd: Path | str) -> str:
    """Run git in `cwd` and return its stdout; raise on failure."""
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@define
class ForgeRepo:
    """A bare repository (`bare`) and a working clone (`work`) that pushes pull request heads."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, root: Path, name: str = "shop") -> ForgeRepo:
        root.mkdir(parents=True, exist_ok=True)
        bare = root / f"{name}.git"
        work = root / f"{name}-work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=root)
        git("init", "--quiet", "--initial-branch=main", str(work), cwd=root)
        git("remote", "add", "origin", str(bare), cwd=work)
        repo = cls(bare, work)
        repo.commit({"README.md": "base\n"}, "base")
        git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=work)
        return repo

    @property
    def url(self) -> str:
        """A file:// URL (so that `--depth 1` really makes a shallow fetch)."""
        return self.bare.as_uri()

    def commit(self, files: Mapping[str, str | bytes], message: str = "change") -> str:
        """Write `files` into the working clone, commit them and return the new SHA."""
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            git("add", name, cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_pull(self, number: int, files: Mapping[str, str | bytes], message: str = "pr") -> str:
        """Commit `files` and publish them as the head of pull request `number`; the SHA."""
        sha = self.commit(files, message)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/pull/{number}/head", cwd=self.work)
        git(
            "push", "--quiet", "--force", "origin",
            f"HEAD:refs/merge-requests/{number}/head", cwd=self.work,
        )
        return sha
