"""What the papers measure, built on curvature operators: layer-wise spectra, block ratios,
Kronecker structure of dense layers."""
