//! A tiny classic-BPF assembler for the seccomp filter: forward jumps to labels, resolved in two
//! passes. Conditional jumps reach 255 instructions; [`Insn::JgeFar`] reaches anywhere (a
//! conditional skip over a `ja`).

use super::SeccompError;

pub(super) const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
pub(super) const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub(super) const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
pub(super) const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
pub(super) const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub(super) const MAX_INSNS: usize = 4096;

/// A jump target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Label(usize);

/// One instruction, or a label's position.
#[derive(Debug, Clone, Copy)]
pub(super) enum Insn {
    /// Load the 32-bit word at this offset of `struct seccomp_data`.
    Load(u32),
    /// Jump to the label when equal, else fall through.
    JeqTo(u32, Label),
    /// Jump to the label when any of the bits is set, else fall through.
    JsetTo(u32, Label),
    /// Jump to the label, however far, when greater or equal (unsigned), else fall through.
    JgeFar(u32, Label),
    /// Return this action.
    Ret(u32),
    /// The position of a label (no instruction).
    Mark(Label),
}

impl Insn {
    fn len(self) -> usize {
        match self {
            Insn::Mark(_) => 0,
            Insn::JgeFar(..) => 2,
            _ => 1,
        }
    }
}

/// A program being written: instructions and fresh labels.
#[derive(Default)]
pub(super) struct Program {
    insns: Vec<Insn>,
    labels: usize,
}

impl Program {
    /// A label not used yet.
    pub(super) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels)
    }

    /// Appends an instruction.
    pub(super) fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    /// The instructions with every jump resolved.
    pub(super) fn assemble(&self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut at = vec![None; self.labels + 1];
        let mut index = 0usize;
        for insn in &self.insns {
            if let Insn::Mark(Label(l)) = insn {
                if let Some(slot) = at.get_mut(*l) {
                    *slot = Some(index);
                }
            }
            index += insn.len();
        }
        if index > MAX_INSNS {
            return Err(SeccompError::TooLong(index));
        }
        // The distance from the instruction after `from` to the label.
        let offset = |l: Label, from: usize| -> Result<usize, SeccompError> {
            let to = at
                .get(l.0)
                .copied()
                .flatten()
                .ok_or(SeccompError::UnboundLabel)?;
            to.checked_sub(from + 1).ok_or(SeccompError::BackwardJump)
        };
        let short = |l: Label, from: usize| -> Result<u8, SeccompError> {
            let off = offset(l, from)?;
            u8::try_from(off).map_err(|_| SeccompError::JumpTooFar(off))
        };
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let mut out = Vec::with_capacity(index);
        for insn in &self.insns {
            let here = out.len();
            match *insn {
                Insn::Mark(_) => {}
                Insn::Load(off) => out.push(f(LD_W_ABS, 0, 0, off)),
                Insn::JeqTo(k, l) => out.push(f(JEQ_K, short(l, here)?, 0, k)),
                Insn::JsetTo(k, l) => out.push(f(JSET_K, short(l, here)?, 0, k)),
                Insn::JgeFar(k, l) => {
                    // >= k: fall onto the `ja`; < k: skip it.
                    out.push(f(JGE_K, 0, 1, k));
                    let off = offset(l, here + 1)?;
                    let off = u32::try_from(off).map_err(|_| SeccompError::JumpTooFar(off))?;
                    out.push(f(JA, 0, 0, off));
                }
                Insn::Ret(k) => out.push(f(RET_K, 0, 0, k)),
            }
        }
        Ok(out)
    }
}
