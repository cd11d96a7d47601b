"""Xen hosts. Both kinds end as a `Dom0` (dom0.py): a running dom0 reached over one SSH connection.

- `nested` (nested.py): Xen and dom0 booted under QEMU here; `NestedHost.dom0()` connects to it.
- `ssh`: a running dom0 somewhere else (a real Xen host, or a nested one started by `xenfb-harness host up`);
  `connect_ssh()` connects to it with the config's address, user, key and known_hosts file.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .dom0 import Dom0, Share
from .ssh import SSHSession


def connect_ssh(host: dict, accept_new_host_key: bool = False, timeout: float = 60) -> Dom0:
    """`host` is the config's host section with kind 'ssh'."""
    # Given paths are resolved by the config; defaults ("~/.ssh/...") only here.
    ssh = SSHSession(host["address"], host["port"], host["user"], Path(os.path.expanduser(host["key"])),
                     Path(os.path.expanduser(host["known_hosts"])), accept_new_host_key=accept_new_host_key)
    ssh.connect(time.monotonic() + timeout)
    where = host["address"] if host["port"] == 22 else f"{host['address']}:{host['port']}"
    share = Share(Path(host["share_dir"]), host["share_mount"].rstrip("/")) if host["share_dir"] else None
    return Dom0(ssh, f"ssh: {host['user']}@{where}", host["workdir"], share=share)
