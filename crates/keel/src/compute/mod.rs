//! `/compute`: CPU-bound work, run on a bounded thread pool and never on the async runtime.

mod pool;

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRef, State},
};
use ndarray::Array2;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{ApiError, FieldError, InputLocation, Problem},
    http::extract::QueryPairs,
};

pub use pool::{CpuPool, PoolError};

/// Largest matrix side accepted.
pub const MAX_N: usize = 1024;

/// The compute routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<CpuPool>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(matmul))
}

/// Result of a matrix product.
#[derive(Debug, Serialize, ToSchema)]
pub struct MatmulResult {
    /// Side of the matrices.
    #[schema(example = 128)]
    pub n: usize,
    /// Sum of all entries of A·B.
    #[schema(example = 22_258_929.0)]
    pub checksum: f64,
}

/// Multiply two deterministic N×N matrices.
///
/// `A[i][j] = (i·j mod 7) + 1` and `B[i][j] = ((i + j) mod 5) + 1` (0-based); answers the sum
/// of all entries of A·B. Runs on the CPU pool; when it is saturated the answer is 503 with
/// `Retry-After`.
#[utoipa::path(
    get,
    path = "/compute/matmul",
    tag = "compute",
    params(("n" = usize, Query, minimum = 1, maximum = 1024, description = "Side of the matrices")),
    responses(
        (status = 200, description = "The checksum of A·B", body = MatmulResult),
        (status = 422, description = "n is missing or outside 1–1024", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The CPU pool is saturated; retry after the given delay", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn matmul(
    State(pool): State<Arc<CpuPool>>,
    query: QueryPairs,
) -> Result<Json<MatmulResult>, ApiError> {
    let n = query
        .get("n")
        .and_then(|raw| raw.parse::<usize>().ok())
        .filter(|n| (1..=MAX_N).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(FieldError::new(
                InputLocation::Query,
                "/n",
                "out_of_range",
                format!("must be an integer from 1 to {MAX_N}"),
            ))
        })?;
    let checksum = pool
        .run(move || matmul_checksum(n))
        .await
        .map_err(|e| match e {
            PoolError::Busy => ApiError::Unavailable {
                detail: "every CPU worker is busy and the queue is full".to_owned(),
                retry_after_secs: 1,
            },
            PoolError::Panicked => ApiError::internal(e),
        })?;
    Ok(Json(MatmulResult { n, checksum }))
}

/// Builds A and B, multiplies them and sums the product.
pub fn matmul_checksum(n: usize) -> f64 {
    // The entries are small integers, so every f64 here is exact.
    let a = residue_matrix(n, 7, |i| (0, i % 7));
    let b = residue_matrix(n, 5, |i| (i % 5, 1));
    a.dot(&b).sum()
}

/// The n×n matrix whose row i is `r, r + s, r + 2s, ...` taken mod `m`, plus one, where
/// `(r, s) = start(i)`. Walking the residues replaces a division per entry, which at
/// n = 128 cost more than the product itself.
fn residue_matrix(n: usize, m: usize, start: impl Fn(usize) -> (usize, usize)) -> Array2<f64> {
    let mut matrix = Array2::zeros((n, n));
    for (i, mut row) in matrix.rows_mut().into_iter().enumerate() {
        let (mut residue, step) = start(i);
        for entry in row.iter_mut() {
            *entry = (residue + 1) as f64;
            residue += step;
            if residue >= m {
                residue -= m;
            }
        }
    }
    matrix
}

#[cfg(test)]
mod tests {
    use super::{matmul_checksum, residue_matrix};

    /// sum(A·B) = Σ_k (column k of A summed) · (row k of B summed), computed exactly in u64.
    fn expected(n: usize) -> f64 {
        (0..n)
            .map(|k| {
                let column: u64 = (0..n).map(|i| ((i * k) % 7 + 1) as u64).sum();
                let row: u64 = (0..n).map(|j| ((k + j) % 5 + 1) as u64).sum();
                column * row
            })
            .sum::<u64>() as f64
    }

    #[test]
    fn matrices_follow_their_definition() {
        let n = 40;
        let a = residue_matrix(n, 7, |i| (0, i % 7));
        let b = residue_matrix(n, 5, |i| (i % 5, 1));
        for i in 0..n {
            for j in 0..n {
                assert_eq!(a[[i, j]], ((i * j) % 7 + 1) as f64, "A[{i}][{j}]");
                assert_eq!(b[[i, j]], ((i + j) % 5 + 1) as f64, "B[{i}][{j}]");
            }
        }
    }

    #[test]
    fn checksum_matches_the_closed_form() {
        for n in [1, 2, 3, 17, 128, 257] {
            assert_eq!(matmul_checksum(n), expected(n), "n = {n}");
        }
        assert_eq!(matmul_checksum(1), 1.0);
        assert_eq!(matmul_checksum(2), 21.0);
    }
}
