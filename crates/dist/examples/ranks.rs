//! `mpirun -np N target/release/examples/ranks`: each rank prints its place and a sum over
//! ranks (a manual check of the MPI loading; the tests run the real commands under mpirun).
fn main() {
    let w = match orlik_dist::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut v = vec![(w.rank() + 1) as f32; 5];
    if let Err(e) = w.sum_f32(&mut v) {
        eprintln!("error: {e}");
        w.abort(1);
    }
    println!("{}: sum of rank+1 = {:?}", w.describe(), v[0]);
    w.finalize();
}
