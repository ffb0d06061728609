"""Reference similarity transforms for face alignment (elasticface_core::align), computed with numpy in float64.

Umeyama's least-squares similarity (1991, "Least-squares estimation of transformation parameters between two
point patterns"), with its reflection correction, through an SVD as scikit-image's SimilarityTransform.estimate
computes it: the project's closed form must give the same transform.

Writes alignment.json: for each case the five detected landmarks `from` (float32 values), the reference points
`to` (insightface's 112x112 template, float32 values) and the 2x3 matrix [[a, -b, tx], [b, a, ty]].

Usage: python gen_alignment.py OUT_DIR SEED   (the file in data/ was made with SEED 20261130)
"""
import json, sys
import numpy as np

OUT, SEED = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(SEED)

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]], dtype=np.float32).astype(np.float64)


def umeyama(src, dst):
    """The similarity (rotation, uniform scale, translation) mapping src onto dst in least squares; 3x3."""
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    A = dst_c.T @ src_c / n
    d = np.ones(dim)
    if np.linalg.det(A) < 0:
        d[-1] = -1
    U, S, Vt = np.linalg.svd(A)
    T = np.eye(dim + 1)
    T[:dim, :dim] = U @ np.diag(d) @ Vt
    scale = (S @ d) / src_c.var(axis=0).sum()
    T[:dim, dim] = dst_mean - scale * (T[:dim, :dim] @ src_mean)
    T[:dim, :dim] *= scale
    return T


cases = []
for k in range(12):
    # A face of the template's shape, turned, scaled and moved into a larger photo, with detection noise.
    angle = rng.uniform(-0.9, 0.9)
    scale = rng.uniform(0.4, 4.0)
    R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = rng.uniform(0, 600, size=2)
    noise = rng.normal(0, [0.5, 2.0, 6.0][k % 3], size=(5, 2))
    detected = (TEMPLATE @ R.T + shift + noise).astype(np.float32)
    if k == 11:
        # Landmarks mirrored (a detector's left/right swapped): the reflection the correction rules out.
        detected[:, 0] = -detected[:, 0] + 900.0
    T = umeyama(detected.astype(np.float64), TEMPLATE)
    cases.append({"from": detected.tolist(), "to": TEMPLATE.astype(np.float32).tolist(),
                  "matrix": T[:2].tolist()})

with open(f"{OUT}/alignment.json", "w") as f:
    json.dump({"seed": SEED, "generator": "gen_alignment.py", "cases": cases}, f, indent=1)
    f.write("\n")
