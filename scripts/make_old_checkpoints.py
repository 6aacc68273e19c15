"""Write tests/data/checkpoints-0.1.0 with an OLD argen release (run it against that release):

    git archive e8a4046 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python scripts/make_old_checkpoints.py tests/data/checkpoints-0.1.0

Each registered model's tiny config, grey 4-level and RGB 256-level, perturbed weights, saved with
argen.save, plus a batch and its log_prob (after torch.manual_seed(2)) in expected.json.
"""
import json
import sys

import torch

import argen
from argen.registry import tiny_kwargs

out = sys.argv[1]
rec = {}
for name in argen.list_models():
    for shape, levels in [((1, 4, 4), 4), ((3, 4, 4), 256)]:
        kw = tiny_kwargs(name)
        try:
            torch.manual_seed(0)
            m = argen.create_model(name, image_shape=shape, levels=levels, **kw).eval()
        except ValueError as e:
            print("skip", name, shape, e)
            continue
        tag = f"{name}-{shape[0]}x{shape[1]}x{shape[2]}-{levels}"
        if tag == "ardm-3x4x4-256":  # 640 KB: the grey ARDM covers the family
            continue
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        argen.save(m, f"{out}/{tag}")
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, levels, (2, *shape), generator=g)
        torch.manual_seed(2)
        with torch.no_grad():
            lp = m.log_prob(x)
        rec[tag] = {"x": x.tolist(), "log_prob": lp.tolist()}
json.dump(rec, open(f"{out}/expected.json", "w"))
print(len(rec))
