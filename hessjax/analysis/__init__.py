"""What the papers measure, built on curvature operators: layer-wise spectra, block ratios,
Kronecker structure of dense layers (`blocks`, `kronecker`); weight-SVD directions and the
alignment of Hessian eigenvectors with the weights (`weights`); trajectory recording, PCA of
weights and updates, drift mode and the quadratic-potential fit (`trajectory`)."""
