"""`torchrun`, for PyTorch builds whose own torchrun cannot start on Python 3.11.

Debian's torch 1.13 (python3-torch) runs on Python 3.11, where iterating an IntFlag no longer
yields its 0 member; torch 1.13's Std.from_str("0") (the default of --redirects and --tee)
then returns None and torchrun fails before starting a worker with
"AttributeError: 'NoneType' object has no attribute 'get'". PyTorch 2.x does not have the
problem. This is torchrun with that one function fixed when (and only when) it is broken;
it takes exactly torchrun's flags:

    python3 interop/torchrun.py --nproc_per_node 2 interop/torch_train.py --phase pretrain ...
"""

import re
import sys

from torch.distributed.elastic.multiprocessing import api
from torch.distributed.run import main


def _from_str(vm: str):
    """"N" -> Std(N); "i:N,j:M" -> {i: Std(N), j: Std(M)} (torch's own contract)."""
    if re.fullmatch(r"[0-3]", vm):
        return api.Std(int(vm))
    if re.fullmatch(r"([0-9]+:[0-3],)*[0-9]+:[0-3]", vm):
        return {int(i): api.Std(int(v)) for i, v in (m.split(":") for m in vm.split(","))}
    raise ValueError(f"{vm} does not match: <{'|'.join(str(s.value) for s in api.Std)}> or <local_rank>:<0..3>,...")


if api.Std.from_str("0") is None:
    api.Std.from_str = staticmethod(_from_str)

if __name__ == "__main__":
    sys.exit(main())
