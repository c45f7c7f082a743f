// mimalloc instead of glibc malloc: a request allocates many small short-lived
// objects on two worker threads, where glibc's locking and consolidation cost
// ~17 % of the CPU (bench/README.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
