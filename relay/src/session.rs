//! The per-connection session state machine: what a connection may do next.
//!
//! Pure logic, no I/O: the connection handler feeds it requests and acts on its answers.

use crate::admission::verify_work;
use crate::identity::{self, AccountId, Purpose};
use crate::wire::pb::ErrorCode;

/// A request refused by the session rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error code for the client.
    pub code: ErrorCode,
    /// Why, for the client's logs.
    pub message: &'static str,
}

const fn refuse(code: ErrorCode, message: &'static str) -> Refusal {
    Refusal { code, message }
}

/// One connection's authentication and subscription state.
#[derive(Debug)]
pub struct Session {
    /// TLS keying material of this connection; binds signatures to it.
    exporter: [u8; 32],
    /// The outstanding challenge, single use.
    nonce: Option<[u8; 32]>,
    /// Proof-of-work bits the outstanding challenge asks of a registration without a ticket.
    work_bits: u32,
    account: Option<AccountId>,
    subscribed: bool,
}

impl Session {
    /// A fresh session on a connection whose exporter value is `exporter`.
    pub fn new(exporter: [u8; 32]) -> Self {
        Self {
            exporter,
            nonce: None,
            work_bits: 0,
            account: None,
            subscribed: false,
        }
    }

    /// `Hello`: issues `nonce` as the challenge, asking `work_bits` of proof of work from a
    /// registration that presents no ticket. Allowed until authenticated, so a client whose
    /// proof was refused can try again.
    pub fn hello(&mut self, nonce: [u8; 32], work_bits: u32) -> Result<(), Refusal> {
        if self.account.is_some() {
            return Err(refuse(
                ErrorCode::ProtocolViolation,
                "session already authenticated",
            ));
        }
        self.nonce = Some(nonce);
        self.work_bits = work_bits;
        Ok(())
    }

    /// `Register` / `Authenticate`: checks the signature over this session's transcript,
    /// and, when `work` is given (a registration without a ticket), the proof of work the
    /// challenge asked for — first, since it costs one hash against a signature check.
    /// Uses up the challenge either way, so a failed attempt cannot be retried blind.
    pub fn verify_proof(
        &mut self,
        purpose: Purpose,
        public_key: &[u8],
        signature: &[u8],
        work: Option<u64>,
    ) -> Result<AccountId, Refusal> {
        let nonce = self.take_challenge()?;
        let account = AccountId::from_slice(public_key)
            .ok_or(refuse(ErrorCode::Malformed, "public_key must be 32 bytes"))?;
        if let Some(solution) = work
            && !verify_work(&nonce, public_key, self.work_bits, solution)
        {
            return Err(refuse(
                ErrorCode::WorkRequired,
                "registration needs the proof of work its challenge asked for",
            ));
        }
        if signature.len() != 64 {
            return Err(refuse(ErrorCode::Malformed, "signature must be 64 bytes"));
        }
        let transcript = identity::transcript(purpose, &self.exporter, &nonce);
        if identity::verify(&account, &transcript, signature) {
            Ok(account)
        } else {
            Err(refuse(
                ErrorCode::BadSignature,
                "signature does not verify for this key and session",
            ))
        }
    }

    /// Whether a proof would be looked at now: a challenge was issued and the session is
    /// not authenticated yet.
    pub fn awaits_proof(&self) -> bool {
        self.nonce.is_some() && self.account.is_none()
    }

    /// Uses up the challenge without checking a proof: for a registration answered from its
    /// ticket alone (still waiting, or the ticket refused), so that this challenge cannot be
    /// signed later, exactly as if its proof had been checked.
    pub fn spend_challenge(&mut self) -> Result<(), Refusal> {
        self.take_challenge().map(|_| ())
    }

    fn take_challenge(&mut self) -> Result<[u8; 32], Refusal> {
        if self.account.is_some() {
            return Err(refuse(
                ErrorCode::ProtocolViolation,
                "session already authenticated",
            ));
        }
        self.nonce.take().ok_or(refuse(
            ErrorCode::ProtocolViolation,
            "send Hello first to get a challenge",
        ))
    }

    /// Binds the session to `account` after its proof verified and the account exists.
    pub fn bind(&mut self, account: AccountId) {
        self.account = Some(account);
    }

    /// The authenticated account, or UNAUTHENTICATED.
    pub fn account(&self) -> Result<AccountId, Refusal> {
        self.account
            .ok_or(refuse(ErrorCode::Unauthenticated, "authenticate first"))
    }

    /// `Subscribe`: allowed once per session, for the session's own mailbox only.
    pub fn subscribe(&mut self) -> Result<AccountId, Refusal> {
        let account = self.account()?;
        if self.subscribed {
            return Err(refuse(
                ErrorCode::ProtocolViolation,
                "already subscribed on this session",
            ));
        }
        self.subscribed = true;
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, transcript};

    #[test]
    fn proof_must_match_session_nonce_and_key() {
        let me = Identity::generate().expect("rng");
        let mut s = Session::new([7; 32]);
        assert_eq!(
            s.account().map_err(|r| r.code),
            Err(ErrorCode::Unauthenticated)
        );
        let sig = me.sign(&transcript(Purpose::Register, &[7; 32], &[1; 32]));
        let key = me.account().0;
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, None)
                .map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation),
            "no challenge yet"
        );
        s.hello([1; 32], 0).expect("hello");
        // Signed for another session's exporter: refused, and the nonce is used up.
        let elsewhere = me.sign(&transcript(Purpose::Register, &[8; 32], &[1; 32]));
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &elsewhere, None)
                .map_err(|r| r.code),
            Err(ErrorCode::BadSignature)
        );
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, None)
                .map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation)
        );
        s.hello([1; 32], 0).expect("hello again");
        assert_eq!(
            s.verify_proof(Purpose::Register, &key[..31], &sig, None)
                .map_err(|r| r.code),
            Err(ErrorCode::Malformed)
        );
        s.hello([1; 32], 0).expect("hello again");
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, None),
            Ok(me.account())
        );
        s.bind(me.account());
        assert_eq!(s.subscribe(), Ok(me.account()));
        assert_eq!(
            s.subscribe().map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation)
        );
        assert_eq!(
            s.hello([2; 32], 0).map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation)
        );
    }

    #[test]
    fn a_spent_challenge_cannot_be_signed_afterwards() {
        let me = Identity::generate().expect("rng");
        let key = me.account().0;
        let mut s = Session::new([7; 32]);
        assert_eq!(
            s.spend_challenge().map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation),
            "no challenge yet"
        );
        s.hello([3; 32], 0).expect("hello");
        s.spend_challenge().expect("a challenge to spend");
        let sig = me.sign(&transcript(Purpose::Register, &[7; 32], &[3; 32]));
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, None)
                .map_err(|r| r.code),
            Err(ErrorCode::ProtocolViolation)
        );
    }

    #[test]
    fn a_registration_without_ticket_must_carry_the_work_its_challenge_asked() {
        let me = Identity::generate().expect("rng");
        let key = me.account().0;
        let nonce = [5; 32];
        let sig = me.sign(&transcript(Purpose::Register, &[7; 32], &nonce));
        let mut s = Session::new([7; 32]);
        s.hello(nonce, 10).expect("hello");
        let wrong = (0..)
            .find(|w| !verify_work(&nonce, &key, 10, *w))
            .expect("some");
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, Some(wrong))
                .map_err(|r| r.code),
            Err(ErrorCode::WorkRequired)
        );
        // The challenge is used up; a new one may ask for different work.
        s.hello(nonce, 10).expect("hello again");
        let solved = crate::admission::solve_work(&nonce, &key, 10);
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, Some(solved)),
            Ok(me.account())
        );
        // Exempt (a ticket was presented, or a login): no work looked at.
        let mut s = Session::new([7; 32]);
        s.hello(nonce, 10).expect("hello");
        assert_eq!(
            s.verify_proof(Purpose::Register, &key, &sig, None),
            Ok(me.account())
        );
    }
}
