"""Reference figures for the IJB-B/C 1:1 protocol (elasticface::eval::ijb), computed with numpy in float64 as
insightface's eval_ijbc.py computes them, from given face features.

Steps, as insightface's defaults run them (use_flip_test, use_norm_score, use_detector_score):
  feature of a face  = (e + e_flip) * detector score          (here e and e_flip are random, float32)
  template feature   = sum over the template's media of the mean feature of its faces from that media,
                       templates in ascending id order (numpy.unique), then L2-normalised
  score of a pair    = cosine of the two template features
TAR at FAR as the project defines it: with M different pairs, k = floor(far * M) of them may be accepted; the
threshold is the (k + 1)-th largest impostor score; TAR = same pairs scoring above it / same pairs.

1:N identification, as insightface's ijb_evals.py runs it (NIST's open-set protocol), on the same template features:
gallery G1 holds the first template of identities 0, 2, .., 14, G2 those of 1, 3, .., 15; every other template is a
probe (so each gallery has 8 mated probes and 56 non-mated ones). Each probe is scored against each gallery template
by cosine; a mated probe's rank is 1 + the number of other gallery templates scoring at least its mate; a non-mated
probe keeps its best score. TPIR at FPIR as the project defines it: with M non-mated probes, k = floor(fpir * M) may
be answered; the threshold is the (k + 1)-th largest best score; TPIR = mated probes ranked 1 scoring above it /
mated probes. No random draw is added: the 1:1 figures are those the same seed gave before.

Writes ijb_protocol.json. Usage: python gen_ijb.py OUT_DIR SEED   (the file in data/ was made with SEED 20261130)
"""
import json, sys
import numpy as np

OUT, SEED = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(SEED)

D, IDS = 8, 40
faces = []  # (template, media, identity)
template_of_id = {}
next_template, next_media = 1000, 1
for ident in range(IDS):
    for _ in range(2):  # two templates per identity, ids not in order
        t = int(rng.integers(1, 10**6))
        while t in template_of_id:
            t = int(rng.integers(1, 10**6))
        template_of_id[t] = ident
        for _ in range(int(rng.integers(1, 4))):  # media per template
            m = int(rng.integers(1, 10**6))
            for _ in range(int(rng.integers(1, 4))):  # frames per media
                faces.append((t, m, ident))
order = rng.permutation(len(faces))
faces = [faces[i] for i in order]
N = len(faces)
templates = np.array([f[0] for f in faces])
medias = np.array([f[1] for f in faces])
identity = np.array([f[2] for f in faces])

centres = rng.normal(size=(IDS, D))
e = (centres[identity] + 0.9 * rng.normal(size=(N, D))).astype(np.float32)
e_flip = (e + 0.1 * rng.normal(size=(N, D))).astype(np.float32)
score = rng.uniform(0.3, 1.0, size=N).astype(np.float32)
feats = ((e + e_flip) * score[:, None]).astype(np.float32)

unique_templates = np.unique(templates)
template_feats = np.zeros((len(unique_templates), D))
for i, t in enumerate(unique_templates):
    in_t = np.where(templates == t)[0]
    total = np.zeros(D)
    for m in np.unique(medias[in_t]):
        in_m = in_t[medias[in_t] == m]
        total += feats[in_m].astype(np.float64).mean(axis=0)
    template_feats[i] = total
template_feats /= np.linalg.norm(template_feats, axis=1, keepdims=True)

pairs = [(int(a), int(b)) for a in unique_templates for b in unique_templates if a < b]
label = [int(template_of_id[a] == template_of_id[b]) for a, b in pairs]
index = {int(t): i for i, t in enumerate(unique_templates)}
cos = np.array([template_feats[index[a]] @ template_feats[index[b]] for a, b in pairs])
label_arr = np.array(label, dtype=bool)

tars = {}
impostor = np.sort(cos[~label_arr])[::-1]
for far in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]:
    k = int(far * len(impostor))
    if k == 0:
        tars[repr(far)] = None
        continue
    threshold = impostor[k]
    tars[repr(far)] = float((cos[label_arr] > threshold).mean())

# 1:N. Gallery templates in ascending template order, as numpy.unique orders them.
first_template = {}
for t, ident in template_of_id.items():  # in the order they were drawn
    first_template.setdefault(ident, t)
galleries = {"G1": sorted(first_template[i] for i in range(0, 16, 2)),
             "G2": sorted(first_template[i] for i in range(1, 16, 2))}
enrolled = set(galleries["G1"]) | set(galleries["G2"])
probes = sorted(int(t) for t in unique_templates if int(t) not in enrolled)
search = {"galleries": {}, "probes": [[t, template_of_id[t]] for t in probes]}
for name, gallery in galleries.items():
    g = np.array([template_feats[index[t]] for t in gallery])
    subjects = [template_of_id[t] for t in gallery]
    ranks, mated, best = [], [], []
    for t in probes:
        sims = g @ template_feats[index[t]]
        if template_of_id[t] in subjects:
            j = subjects.index(template_of_id[t])
            ranks.append(1 + int(np.sum(np.delete(sims, j) >= sims[j])))
            mated.append(sims[j])
        else:
            best.append(sims.max())
    ranks, mated, best = np.array(ranks), np.array(mated), np.sort(np.array(best))[::-1]
    tpirs = {}
    for fpir in [1e-4, 1e-3, 1e-2, 1e-1]:
        k = int(fpir * len(best))
        tpirs[repr(fpir)] = None if k == 0 else float(((ranks == 1) & (mated > best[k])).mean())
    search["galleries"][name] = {
        "templates": [[t, template_of_id[t]] for t in gallery], "mated": len(ranks), "non_mated": len(best),
        "rank": {str(r): int((ranks <= r).sum()) for r in [1, 5, 10]}, "tpir_at_fpir": tpirs,
    }

out = {
    "seed": SEED, "generator": "gen_ijb.py", "dim": D,
    "faces": [{"template": int(t), "media": int(m), "score": float(s)} for (t, m, _), s in zip(faces, score)],
    "e": e.tolist(), "e_flip": e_flip.tolist(),
    "template_ids": unique_templates.tolist(), "template_features": template_feats.tolist(),
    "pairs": [[a, b, l] for (a, b), l in zip(pairs, label)], "cos": cos.tolist(), "tar_at_far": tars,
    "search": search,
}
with open(f"{OUT}/ijb_protocol.json", "w") as f:
    json.dump(out, f)
    f.write("\n")
print(N, "faces,", len(unique_templates), "templates,", len(pairs), "pairs,", sum(label), "same;", tars)
print({name: (g["rank"], g["tpir_at_fpir"]) for name, g in search["galleries"].items()})
