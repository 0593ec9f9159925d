"""Does the cheap study (cpu_ablate, 4 layers) rank variants as the reproduction's scale does?
The baseline and dropout-0 at the CPU reproduction's scale (ELECTRA-Small, 12 layers, 4,000
steps of 32 x 128), seed 0, with cpu_ablate's GLUE settings.

    python -m experiments.ablate --study cpu_ablate_check --glue-dir ../shared/data/glue \\
        --variants dropout-0
    python -m experiments.ablate --study cpu_ablate_check --report-only

Its baseline is the reproduction's own pre-training (experiments/configs/cpu_reproduce.py, the
same recipe); reuse it rather than train it again (the study checks the recipes are equal):

    mkdir -p runs/ablate-cpu_ablate_check/baseline/seed0
    ln -s ../../../reproduce-cpu_reproduce/pretrain runs/ablate-cpu_ablate_check/baseline/seed0/
    ln -s ../../../reproduce-cpu_reproduce/glue_pretrained \\
        runs/ablate-cpu_ablate_check/baseline/seed0/glue

Expected: about 2.5 hours of pre-training and 1 hour of GLUE on a 2-core CPU for dropout-0.
Reached: not yet run (records/README.md will link the result).
"""

from experiments.configs.cpu_ablate import GLUE
from experiments.configs.cpu_ablate import STUDY as CHEAP
from experiments.configs.cpu_reproduce import FLAGS

STUDY = {"seeds": [0], "variants": [v for v in CHEAP["variants"]
                                    if v.name in ("baseline", "dropout-0")]}
__all__ = ["FLAGS", "GLUE", "STUDY"]
