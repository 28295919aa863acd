//! Ranks of a process group on this machine, started as a launcher starts them: the variables of
//! `torch.distributed`'s `env://`, or PyTorch's own `torchrun`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A port free now (the store's).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `world` copies of `command`, each with the variables a launcher sets for its rank
/// (the store at 127.0.0.1 on a free port) and `extra`; returns them in rank order, their
/// output piped.
pub fn spawn(command: impl Fn() -> Command, world: usize, extra: &[(&str, &str)]) -> Vec<Child> {
    spawn_each(|_| command(), world, extra)
}

/// [`spawn`] with a command of each rank's own (`command(rank)`), as ranks on several machines
/// are started with commands of their own.
pub fn spawn_each(
    command: impl Fn(usize) -> Command,
    world: usize,
    extra: &[(&str, &str)],
) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            command(rank)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1")
                // A rank that cannot reach its peers fails its test within a minute.
                .env("TCH_PRUNE_DIST_TIMEOUT", "60")
                .envs(extra.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect()
}

/// `torchrun --nproc-per-node 2 --no-python` of `program`, the store at 127.0.0.1 on a free
/// port; the program's arguments are the caller's to add.
pub fn torchrun(python: &Path, program: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--no-python",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
        ])
        .arg(free_port().to_string())
        .arg(program)
        .env("OMP_NUM_THREADS", "1");
    command
}
