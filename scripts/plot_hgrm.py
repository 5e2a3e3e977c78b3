#!/usr/bin/env python3
"""Plot HdrHistogram percentile distributions (.hgrm) as an SVG: latency against percentile on
the usual log scale of 1/(1-percentile). Usage: plot_hgrm.py OUT.svg LABEL=FILE.hgrm ..."""
import math
import sys


def read(path):
    pts = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4 and not line.startswith("#"):
                try:
                    value, q = float(parts[0]), float(parts[1])
                except ValueError:
                    continue
                if q < 1.0:
                    pts.append((1.0 / (1.0 - q), value))
    return pts


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, series = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    data = [(label, read(path)) for label, path in series]
    W, H, M = 800, 480, 60
    # Up to the 99.99th percentile; the y axis fits the 99.9th so the tails do not flatten the
    # body of the curves (points above are clipped to the top edge).
    data = [(label, [p for p in pts if p[0] <= 10000]) for label, pts in data]
    xmax = max((p[0] for _, pts in data for p in pts), default=10)
    ymax = max((p[1] for _, pts in data for p in pts if p[0] <= 1000), default=1) * 1.2
    lx = lambda x: M + (W - 2 * M) * math.log10(max(x, 1)) / math.log10(max(xmax, 10))
    ly = lambda y: H - M - (H - 2 * M) * y / ymax
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{M}" y1="{H-M}" x2="{W-M}" y2="{H-M}" stroke="black"/>',
           f'<line x1="{M}" y1="{M}" x2="{M}" y2="{H-M}" stroke="black"/>',
           f'<text x="{W/2}" y="{H-15}" text-anchor="middle">percentile</text>',
           f'<text x="15" y="{H/2}" transform="rotate(-90 15 {H/2})" text-anchor="middle">round trip (us)</text>',
           f'<text x="{W/2}" y="25" text-anchor="middle" font-size="14">TCP ping-pong latency by percentile</text>']
    for p, label in [(1, "0%"), (2, "50%"), (10, "90%"), (100, "99%"), (1000, "99.9%"), (10000, "99.99%")]:
        if p <= xmax:
            svg.append(f'<line x1="{lx(p):.1f}" y1="{H-M}" x2="{lx(p):.1f}" y2="{H-M+5}" stroke="black"/>')
            svg.append(f'<text x="{lx(p):.1f}" y="{H-M+18}" text-anchor="middle">{label}</text>')
    for i in range(6):
        y = ymax * i / 5
        svg.append(f'<text x="{M-5}" y="{ly(y)+4:.1f}" text-anchor="end">{y:.0f}</text>')
    for k, (label, pts) in enumerate(data):
        c = colors[k % len(colors)]
        path = " ".join(f"{lx(x):.1f},{ly(min(y, ymax)):.1f}" for x, y in pts)
        svg.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
        svg.append(f'<text x="{W-M-150}" y="{M+20+18*k}" fill="{c}">{label}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
