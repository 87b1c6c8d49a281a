"""keybuzz-infra: installs and operates the KeyBuzz infrastructure with pyinfra.

Data path: servers.tsv + versions.yaml + credentials/*.env -> keybuzz.inventory (validated once,
up front) -> deploys/<layer>.py -> templates/<layer>/...
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
