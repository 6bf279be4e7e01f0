//! The threads a batch is read and planned on: a few jobs at once, the first on the calling thread, the others
//! on threads that stay up between batches.
//!
//! Reading an event and planning a batch each used to start their threads per batch (`std::thread::scope`). A
//! new thread is placed by the kernel's fork balancing, which goes by each CPU's recent load, not by whether it
//! is idle now, so a new thread can wait for a time slice on a busy CPU while another sits idle (the trace is in
//! docs/src/performance.md). A thread that is woken, as a pool's is, goes to an idle CPU. The pools are rayon-core's: scoped jobs that borrow the batch, a panic
//! in a job carried to the caller.

use std::sync::{Arc, Mutex, PoisonError};

use rayon_core::{ThreadPool, ThreadPoolBuilder};

/// The most threads a batch is decoded on, whatever `codec.threads` says (each thread holds a copy of the
/// batch's schema snapshot; Lambda has at most six CPUs).
pub const MAX_THREADS: usize = 256;

/// How many pools are kept, one per number of threads: a process reads and plans with one number
/// (`codec.threads`); tests and the fuzz targets use a few.
const POOLS: usize = 4;

/// Runs `jobs` at once and returns their answers in order: the first on this thread, the others on the pool
/// kept for `threads` (`threads` − 1 threads, or one per other job if there are more jobs). A batch that is cut
/// into fewer jobs than `threads` uses the same pool, so a process keeps one pool whatever its batches' sizes.
/// Should the pool's threads not start (a process at its thread limit), the jobs run one after the other on
/// this thread, with the same answers.
pub(crate) fn all<T, F>(threads: usize, jobs: Vec<F>) -> Vec<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let workers = threads.max(jobs.len()).saturating_sub(1);
    let Some(pool) = (jobs.len() > 1).then(|| pool(workers)).flatten() else {
        return jobs.into_iter().map(|job| job()).collect();
    };
    let mut answers: Vec<Option<T>> = std::iter::repeat_with(|| None).take(jobs.len()).collect();
    let mut jobs = jobs.into_iter();
    let first = jobs.next();
    let (head, tail) = answers.split_at_mut(1);
    pool.in_place_scope(|scope| {
        for (job, answer) in jobs.zip(tail.iter_mut()) {
            scope.spawn(move |_| *answer = Some(job()));
        }
        head[0] = first.map(|job| job());
    });
    // The scope returned, so every job ran and wrote its answer (a job that panicked panics here instead).
    answers.into_iter().flatten().collect()
}

/// The pools kept, by their number of threads.
static KEPT: Mutex<Vec<(usize, Arc<ThreadPool>)>> = Mutex::new(Vec::new());

/// The pool of `workers` threads, built the first time it is asked for; `None` when its threads cannot start.
fn pool(workers: usize) -> Option<Arc<ThreadPool>> {
    // A panic while the lock was held left the list whole (every change is one push or remove).
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, pool)) = kept.iter().find(|(w, _)| *w == workers) {
        return Some(Arc::clone(pool));
    }
    let built = ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("msk-sync-{i}"))
        .build();
    match built {
        Ok(pool) => {
            let pool = Arc::new(pool);
            if kept.len() == POOLS {
                // Its threads end when the last job holding it is done.
                drop(kept.remove(0));
            }
            kept.push((workers, Arc::clone(&pool)));
            Some(pool)
        }
        Err(e) => {
            tracing::warn!(workers, error = %e, "cannot start threads: working on one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers come back in the jobs' order; the first job runs on the calling thread, the others on a pool's.
    #[test]
    fn jobs_answer_in_order_the_first_on_this_thread() {
        let here = std::thread::current().id();
        let data: Vec<u64> = (0..1_000).collect();
        let jobs: Vec<_> = data
            .chunks(250)
            .map(|chunk| {
                move || {
                    let t = std::thread::current();
                    (
                        chunk.iter().sum::<u64>(),
                        t.id(),
                        t.name().map(str::to_owned),
                    )
                }
            })
            .collect();
        let answers = all(4, jobs);
        let sums: Vec<u64> = answers.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(sums, [31_125, 93_625, 156_125, 218_625]);
        assert_eq!(answers[0].1, here);
        for (_, thread, name) in &answers[1..] {
            assert_ne!(*thread, here);
            assert!(
                name.as_deref().is_some_and(|n| n.starts_with("msk-sync-")),
                "{name:?}"
            );
        }
        assert_eq!(all(4, Vec::<fn() -> u8>::new()), Vec::<u8>::new());
        assert_eq!(all(4, vec![|| 7]), [7]);
        // More jobs than `threads`: a thread each still.
        assert_eq!(all(1, vec![|| 1, || 2, || 3]), [1, 2, 3]);
    }

    /// A job's panic reaches the caller, once every job is done; the pool still works after it.
    #[test]
    fn a_panicking_job_panics_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            all(
                2,
                vec![
                    Box::new(|| 1) as Box<dyn FnOnce() -> i32 + Send>,
                    Box::new(|| panic!("job")),
                ],
            )
        });
        assert!(caught.is_err());
        assert_eq!(all(2, vec![|| 1, || 2]), [1, 2]);
    }

    /// No more than [`POOLS`] pools are kept, whatever sizes are asked for.
    #[test]
    fn pools_kept_are_bounded() {
        for workers in 1..=POOLS + 3 {
            assert!(pool(workers).is_some());
            assert!(KEPT.lock().unwrap().len() <= POOLS);
        }
    }
}
