"""Put each mistake of issue 16 item 7 into the code in turn, run the fast test meant to catch it, restore
the file. Not collected by pytest; run from the repository root: ``PYTHONPATH=$PWD python -m tests.mutants``
(names, e.g. ``M3 M8``, run only those). Prints which tests failed under each mistake (each must fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

MUTANTS = [  # (name, file, original text, the mistake, pytest -k of the test that must fail[, its test file])
 ("M1 whole PE-CLIP loss flipped", "emo/heads/pe_clip.py", "    return lam * fwd + (1 - lam) * bwd, {", "    return -(lam * fwd + (1 - lam) * bwd), {", "test_pe_clip_training_raises"),
 ("M2 only L_bwd flipped", "emo/heads/pe_clip.py", "    return lam * fwd + (1 - lam) * bwd, {", "    return lam * fwd - (1 - lam) * bwd, {", "test_pe_clip_training_raises"),
 ("M3 CLIP contrastive loss flipped", "emo/heads/layers/contrastive.py", "        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))", "        return -0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))", "test_text_guided_training and vfm"),
 ("M4 SupCon flipped", "emo/heads/layers/contrastive.py", "    return -mean_log_prob.mean()", "    return mean_log_prob.mean()", "test_text_guided_training and audio"),
 ("M5 EmotionCLIP loss flipped", "emo/heads/emotionclip.py", "        return loss, {\"logit_scale\"", "        return -loss, {\"logit_scale\"", "test_emotionclip_training"),
 ("M6 L_bwd prototypes all the neutral prompt", "emo/heads/pe_clip.py", "states(torch.cat([neutral_ids, ca_ids]))", "states(torch.cat([neutral_ids, neutral_ids.expand(len(ca_ids), -1)]))", "backward_prototypes"),
 ("M7 L_bwd prototypes in reversed class order", "emo/heads/pe_clip.py", "states(torch.cat([neutral_ids, ca_ids]))", "states(torch.cat([neutral_ids, ca_ids.flip(0)]))", "backward_prototypes"),
 ("M8 runs hand the test part to fit as its validation part", "emo/heads/runs.py", "        head.fit(train, val, log=log)", "        head.fit(train, test if len(test) else val, log=log)", "reads_val_and_never_test"),
 ("M9 prompt targets always the first format", "emo/heads/text_guided.py", "        pick = torch.multinomial(self.valid[r].float(), 1, generator=generator)[:, 0]  # [B]", "        pick = self.valid[r].float().argmax(1)  # [B]", "draw_every_format"),
 ("M10 PE-CLIP classifier weights in reversed class order", "emo/heads/pe_clip.py", 'self.register_buffer("ca_weights", tower.encode(ca_ids), persistent=False)', 'self.register_buffer("ca_weights", tower.encode(ca_ids.flip(0)), persistent=False)', "classifier_weights_are"),
 ("M11 VFM queries from another prompt format", "emo/heads/text_guided.py", "[p[0] for p in class_prompts(self.classes, [1])]", "[p[0] for p in class_prompts(self.classes, [3])]", "vfm_queries"),
 ("M12 cache keys: views normalised before averaging", "emo/heads/cache_classifier.py", "    stack = torch.as_tensor(np.stack(views)).float()  # [R, n, D]", "    stack = F.normalize(torch.as_tensor(np.stack(views)).float(), dim=-1)  # [R, n, D]", "cache_keys"),
 ("M13 cache keys from unit view features", "emo/heads/cache_classifier.py", "generator=gen, unit=False)", "generator=gen, unit=True)", "cache_keys"),
 ("M14 PE-CLIP logits under the step's autocast", "emo/heads/pe_clip.py", "    with fp32(v.device):\n        return scaled_cosine(v, w) / tau", "    return F.normalize(v, dim=-1) @ F.normalize(w, dim=-1).T / tau", "pe_clip_logits", "tests/test_fp32_logits.py"),
 ("M15 the VFM's contrastive loss under the step's autocast", "emo/heads/layers/contrastive.py", "    with fp32(video.device):  # float32 whatever the step's autocast (layers.similarity)\n        logits = cosine_logits(video, text, logit_scale)  # [B, B]", "    if True:\n        logits = logit_scale * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).T", "emoasst", "tests/test_fp32_logits.py"),
]


def main(only: list[str]) -> int:
    missed = 0
    for name, path, old, new, k, *where in MUTANTS:
        if only and name.split()[0] not in only:
            continue
        with open(path, encoding="utf-8") as f:
            src = f.read()
        if src.count(old) != 1:
            raise SystemExit(f"{name}: {path} no longer holds the original text once; update tests/mutants.py")
        backup = tempfile.NamedTemporaryFile(delete=False).name
        shutil.copy(path, backup)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(src.replace(old, new))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *(where or ["tests/test_wrong_heads.py"]), "-k", k],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        finally:
            shutil.copy(backup, path)
            os.unlink(backup)
        failed = [line.split("::")[1].split(" ")[0] for line in r.stdout.splitlines() if line.startswith("FAILED")]
        missed += not failed
        print(f"{name}: {'caught by ' + ', '.join(failed) if failed else 'NOT CAUGHT'}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
