"""One process of the launch in test_distributed_grpo: ``easyetcon edit ARGS...`` with the tests'
letter-e reward registered (a random model never earns the edit rewards), which then writes the
digest of this process's edited model to DIGESTS/<rank>.txt.

Run as ``accelerate launch ... tests/consolidation/distributed_edit.py DIGESTS edit ...``.
"""

import sys
from pathlib import Path

import torch

from easyetcon import chain as chain_module
from easyetcon.cli import cli
from easyetcon.distributed import process_rank
from easyetcon.plugins import get_host
from tests.consolidation.helpers import LetterReward


def main() -> None:
    digests, arguments = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)  # two processes on a shared machine
    get_host().register(LetterReward(), name="letter-rewards")
    edited = []
    apply = chain_module.EditChain.apply

    def apply_and_keep(self, model, *args, **kwargs):
        result = apply(self, model, *args, **kwargs)
        edited.append(model)
        return result

    chain_module.EditChain.apply = apply_and_keep
    try:
        cli.main(args=arguments, prog_name="easyetcon", standalone_mode=False)
    finally:
        if edited:  # also when the processes disagreed, so the test can show how
            (digests / f"{process_rank()}.txt").write_text(edited[0].state_hash())


if __name__ == "__main__":
    main()
