//! Method negotiation (RFC 1928 §3) and username/password (RFC 1929).

use ferrosocks_proto::{
    Greeting, Method, MethodSelection, Password, UserPassRequest, UserPassStatus,
};

use super::report::{Check, CheckBuilder};
use super::wire::{method_name, methods, Afterwards, Conn, Settings, WireError};

/// A method code no server is expected to accept (private range, RFC 1928 §3).
const UNKNOWN_METHOD: Method = Method(0xfe);

/// Sends a greeting offering `offered` and reads the selection.
async fn offer(s: &Settings, offered: &[Method]) -> Result<(Conn, Method), WireError> {
    let mut conn = Conn::open(s).await?;
    conn.send_msg(&Greeting {
        methods: offered.to_vec(),
    })
    .await?;
    let sel: MethodSelection = conn.recv("method selection").await?;
    Ok((conn, sel.method))
}

/// One "offer these methods alone" check: pass when the server takes one of them,
/// unsupported on `05 FF`, fail when it picks something that was not offered.
async fn offer_check(s: &Settings, b: CheckBuilder, offered: &[Method]) -> Check {
    let list = methods(offered);
    match offer(s, offered).await {
        Err(e) => b.fail(format!("offered {list}: {e}")),
        Ok((_, Method::NO_ACCEPTABLE)) => b
            .unsupported(format!("offered {list}: answers 05 ff (none acceptable)"))
            .with_value("ff"),
        Ok((_, m)) if offered.contains(&m) => b
            .pass(format!("offered {list}: selects {}", method_name(m)))
            .with_value(format!("{:02x}", m.0)),
        Ok((_, m)) => b
            .fail(format!(
                "offered {list}: selects {}, which was not offered",
                method_name(m)
            ))
            .with_value(format!("{:02x}", m.0)),
    }
}

pub(crate) async fn run(s: &Settings, out: &mut Vec<Check>) {
    // Independent connections, run side by side: against a server that never answers,
    // the step timeouts then overlap instead of adding up.
    let (no_auth, user_pass, gssapi, both, none) = tokio::join!(
        offer_check(
            s,
            Check::named("methods.no_auth", "offer NO AUTHENTICATION alone"),
            &[Method::NO_AUTH],
        ),
        offer_check(
            s,
            Check::named("methods.user_pass", "offer USERNAME/PASSWORD alone"),
            &[Method::USER_PASS],
        ),
        offer_check(
            s,
            Check::named("methods.gssapi", "offer GSSAPI alone"),
            &[Method::GSSAPI],
        ),
        offer_check(
            s,
            Check::named(
                "methods.both",
                "offer NO AUTHENTICATION and USERNAME/PASSWORD",
            ),
            &[Method::NO_AUTH, Method::USER_PASS],
        ),
        none_acceptable(s),
    );
    out.extend([no_auth, user_pass, gssapi, both, none]);
    let (ok, wrong) = tokio::join!(auth_success(s), auth_wrong_password(s));
    out.extend([ok, wrong]);
}

/// Only an unknown method: RFC 1928 §3 wants `05 FF`, and "the client MUST close the
/// connection"; a server that closes too (DESIGN.md) frees the slot at once.
async fn none_acceptable(s: &Settings) -> Check {
    let b = Check::named(
        "methods.none_acceptable",
        "nothing acceptable: 05 FF, then close",
    );
    match offer(s, &[UNKNOWN_METHOD]).await {
        Err(e) => b.fail(format!("offered fe: {e}")),
        Ok((mut conn, Method::NO_ACCEPTABLE)) => {
            let after = conn.afterwards(s.close_wait).await;
            let detail = format!(
                "offered fe: answers 05 ff, {}",
                after.describe(s.close_wait)
            );
            let value = format!("ff {}", after.word());
            if after == Afterwards::Closes {
                b.pass(detail).with_value(value)
            } else {
                b.fail(detail).with_value(value)
            }
        }
        Ok((_, m)) => b
            .fail(format!(
                "offered only the unknown method fe: selects {}",
                method_name(m)
            ))
            .with_value(format!("{:02x}", m.0)),
    }
}

/// Why a login attempt ended before a status arrived.
enum LoginError {
    Wire(WireError),
    NotSelected(Method),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Wire(e) => e.fmt(f),
            LoginError::NotSelected(m) => {
                write!(f, "offered 02 alone: selects {}", method_name(*m))
            }
        }
    }
}

/// Offers USER_PASS alone and sends `creds`; the selection, then the status.
async fn login(
    s: &Settings,
    creds: &UserPassRequest,
) -> Result<(Conn, UserPassStatus), LoginError> {
    let (mut conn, m) = offer(s, &[Method::USER_PASS])
        .await
        .map_err(LoginError::Wire)?;
    if m != Method::USER_PASS {
        return Err(LoginError::NotSelected(m));
    }
    conn.send_msg(creds).await.map_err(LoginError::Wire)?;
    let status = conn
        .recv::<UserPassStatus>("username/password status")
        .await
        .map_err(LoginError::Wire)?;
    Ok((conn, status))
}

async fn auth_success(s: &Settings) -> Check {
    let b = Check::named("auth.userpass", "RFC 1929 login with the given credentials");
    let Some(creds) = &s.credentials else {
        return b.na("no credentials given (--user/--pass)");
    };
    match login(s, creds).await {
        Err(e) => b.fail(e.to_string()),
        Ok((_, st)) if st.is_success() => b.pass("status 00: accepted").with_value("00"),
        Ok((_, st)) => b
            .fail(format!(
                "status {:02x}: the given credentials are rejected",
                st.status
            ))
            .with_value(format!("{:02x}", st.status)),
    }
}

/// RFC 1929 §2: a failure status, after which "the server MUST close the connection".
async fn auth_wrong_password(s: &Settings) -> Check {
    let b = Check::named(
        "auth.wrong_password",
        "wrong password: non-zero status, then close",
    );
    let Some(creds) = &s.credentials else {
        return b.na("no credentials given (--user/--pass)");
    };
    let mut wrong = creds.password.expose().to_vec();
    if wrong.len() >= 255 {
        wrong[254] ^= 0x01;
    } else {
        wrong.push(b'x');
    }
    let bad = UserPassRequest {
        username: creds.username.clone(),
        password: Password::new(wrong),
    };
    match login(s, &bad).await {
        Err(LoginError::Wire(WireError::Closed { got, .. })) if got.is_empty() => b
            .fail("closes without sending a status (RFC 1929 requires one)")
            .with_value("none closes"),
        Err(e) => b.fail(e.to_string()),
        Ok((_, st)) if st.is_success() => b
            .fail("status 00: a wrong password is ACCEPTED")
            .with_value("00"),
        Ok((mut conn, st)) => {
            let after = conn.afterwards(s.close_wait).await;
            let detail = format!("status {:02x}, {}", st.status, after.describe(s.close_wait));
            let value = format!("{:02x} {}", st.status, after.word());
            if after == Afterwards::Closes {
                b.pass(detail).with_value(value)
            } else {
                b.fail(detail).with_value(value)
            }
        }
    }
}
