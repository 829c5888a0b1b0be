//! Which syscall a pending entry belongs to; stored between sys_enter and sys_exit.

/// An empty pending-call slot: the thread is not inside a traced syscall.
pub const NONE: u8 = 0;
pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
pub const READV: u8 = 3;
pub const WRITEV: u8 = 4;
pub const RECVMSG: u8 = 5;
pub const SENDMSG: u8 = 6;
pub const CONNECT: u8 = 7;
pub const ACCEPT: u8 = 8;
pub const SENDFILE: u8 = 9;
/// `dup2` or `dup3` onto a different fd, which closes that fd's file.
pub const DUP: u8 = 10;

/// Whether a call of `kind` moves bytes that the data exit captures.
pub const fn carries_data(kind: u8) -> bool {
    matches!(
        kind,
        READ | WRITE | READV | WRITEV | RECVMSG | SENDMSG | SENDFILE
    )
}
