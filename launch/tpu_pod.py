#!/usr/bin/env python3
"""Cloud TPU VM / pod slice: create it, install edistill on every worker, run one command on all.

    python launch/tpu_pod.py --name ed-v4-32 --zone us-central2-b --accelerator-type v4-32 \\
        --workdir gs://MY_BUCKET/runs/qemb --config configs/ablation.py:row=qemb --bf16 \\
        -- --config.train.batch_size=8192
    python launch/tpu_pod.py ... --dry-run                  # print the gcloud commands only
    python launch/tpu_pod.py ... --phases run               # rerun (resumes from the workdir's checkpoint)
    python launch/tpu_pod.py --name ed-v4-32 --zone us-central2-b --phases delete

Phases (``--phases``, default create,install,run): ``create`` the TPU VM (``gcloud compute tpus tpu-vm
create``); ``install`` copies this source tree to every worker (``scp --worker=all``) and installs it
with Python 3.11 (via uv) and ``jax[tpu]``; ``run`` starts ``python -m edistill.main`` on
``--worker=all`` with ``--config.distributed.enabled=True`` (each worker is one JAX process;
jax.distributed auto-detects the slice). The workdir must be a gs:// bucket every worker can write:
Orbax checkpoints are written by all workers together, logs and results by worker 0 only.
``delete`` removes the TPU VM.
"""
from __future__ import annotations

import argparse
import shlex

from _common import ROOT, add_common_flags, execute, main_flags

PHASES = ("create", "install", "run", "delete")
TARBALL = "/tmp/edistill-src.tgz"


def commands(args) -> list[tuple[dict[str, str], list[str]]]:
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  ssh = lambda command: ({}, [*tpu, "ssh", args.name, *where, "--worker=all", f"--command={command}"])
  out = []
  for phase in args.phases:
    if phase == "create":
      out.append(({}, [*tpu, "create", args.name, *where, f"--accelerator-type={args.accelerator_type}",
                       f"--version={args.version}", *(["--spot"] if args.spot else [])]))
    elif phase == "install":
      out.append(({}, ["tar", "czf", TARBALL, "-C", str(ROOT), "--exclude=.venv", "--exclude=.git",
                       "--exclude=runs", "--exclude=*.egg-info", "."]))
      out.append(({}, [*tpu, "scp", TARBALL, f"{args.name}:~/edistill-src.tgz", *where, "--worker=all"]))
      out.append(ssh(
          "set -e; rm -rf ~/edistill && mkdir -p ~/edistill && tar xzf ~/edistill-src.tgz -C ~/edistill && "
          "cd ~/edistill && (command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh) && "
          "export PATH=$HOME/.local/bin:$PATH && uv venv --python 3.11 .venv && "
          f"uv pip install --python .venv/bin/python -e . 'jax[tpu]=={args.jax_version}' {' '.join(args.extra_packages)}"))
    elif phase == "run":
      flags = main_flags(args, args.workdir, "--config.distributed.enabled=True")
      command = "cd ~/edistill && " + shlex.join([".venv/bin/python", *flags])
      if args.detach:  # Survives the ssh session; each worker logs to ~/edistill/train.log.
        command = f"cd ~/edistill && nohup {shlex.join(['.venv/bin/python', *flags])} > train.log 2>&1 &"
      out.append(ssh(command))
    elif phase == "delete":
      out.append(({}, [*tpu, "delete", args.name, *where, "--quiet"]))
  return out


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True, help="e.g. us-central2-b (where the accelerator type exists)")
  p.add_argument("--project", default="", help="GCP project (default: gcloud's configured one)")
  p.add_argument("--accelerator-type", default="v4-8", help="e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16")
  p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version (runtime image)")
  p.add_argument("--spot", action="store_true", help="create a Spot TPU (preemptible; SIGTERM saves a checkpoint)")
  p.add_argument("--workdir", default="", help="gs://BUCKET/PATH shared by all workers (needed by the run phase)")
  p.add_argument("--phases", default="create,install,run", help=f"comma-separated, in order, from {PHASES}")
  p.add_argument("--detach", action="store_true", help="run under nohup (logs in ~/edistill/train.log per worker)")
  p.add_argument("--jax-version", default="0.10.2", help="must match edistill's pinned jax")
  p.add_argument("--extra-packages", nargs="*", default=["gcsfs", "google-cloud-storage"],
                 help="installed with edistill (gs:// support for epath/Orbax metadata and TensorBoard)")
  add_common_flags(p)
  args = p.parse_args(argv)
  args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
  unknown = [x for x in args.phases if x not in PHASES]
  if unknown or not args.phases:
    p.error(f"--phases: unknown {unknown}; expected a comma-separated list from {PHASES}.")
  if "run" in args.phases and not args.workdir.startswith("gs://"):
    p.error(f"--workdir={args.workdir!r}: the run phase needs a gs:// workdir that every worker shares "
            "(Orbax saves are written by all workers together).")
  return args


if __name__ == "__main__":
  a = parse()
  execute(commands(a), a.dry_run)
