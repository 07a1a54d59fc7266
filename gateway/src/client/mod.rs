//! The reference client: `xdpgate client enroll` redeems an enrollment link (the RSA key is
//! generated here and only its public half is sent) and writes the profile;
//! `xdpgate client connect` asks for approval with the profile and reports where to connect.
//!
//! Every HTTPS exchange is pinned: to the link's certificate hash at enrollment, then to the
//! certificate stored in the profile's `tls_anchor_pem`.

pub mod device;
pub mod https;
pub mod tpm;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use self::https::{Endpoint, HttpsError, HttpsRequest};
use crate::approval::{
    self, ClientProfile, ClientRsaKey, ConnectTarget, ErrorBody, HmacSecret, KeyError,
    ProfileError, PublicCode, RequestParams, ResponsePayload, TransportProtocol, Verdict,
};
use crate::enrollment::{self, EnrollRequest, EnrollmentError, EnrollmentLink};
use crate::tls::{self, TlsError};

/// Deadline of one HTTPS exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest enrollment answer read.
const MAX_ENROLL_REPLY_BYTES: usize = 64 * 1024;
/// The version sent in every request.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientCommandError {
    /// The link is not an enrollment link.
    #[error(transparent)]
    Link(#[from] EnrollmentError),
    /// The profile file exists and `--force` was not given.
    #[error("{0} exists; pass --force to replace it")]
    ProfileExists(PathBuf),
    /// The profile file could not be read or written.
    #[error("{path}")]
    ProfileIo {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The profile is invalid.
    #[error("invalid profile")]
    Profile(#[from] ProfileError),
    /// A key could not be generated or used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTPS exchange failed.
    #[error(transparent)]
    Https(#[from] HttpsError),
    /// The server refused the enrollment token.
    #[error(
        "the server refused the enrollment (denied): the link is invalid, already used or expired; ask the operator for a new one"
    )]
    EnrollDenied,
    /// The server answered the enrollment with an error.
    #[error("enrollment failed: HTTP {status}: {code}")]
    EnrollFailed {
        /// HTTP status.
        status: u16,
        /// The public error code or a description.
        code: String,
    },
    /// The server's enrollment answer is unusable.
    #[error("the server's enrollment answer is unusable: {0}")]
    BadEnrollAnswer(String),
    /// The enrollment answer is not the controller's sealed answer to this request.
    #[error("enrollment refused by this client: {0}")]
    EnrollAnswerUntrusted(EnrollmentError),
    /// No server named and the profile has several.
    #[error("the profile allows several servers ({0}); choose one with --server")]
    ChooseServer(String),
    /// Building the request failed.
    #[error("cannot build the approval request")]
    Request(#[from] approval::ClientError),
    /// The server sealed a denial (authenticated).
    #[error("approval denied by the server: {code}")]
    Denied {
        /// The public code.
        code: String,
    },
    /// The server answered with an unsealed error (unauthenticated hint).
    #[error("approval refused: HTTP {status}: {code}{detail} (unauthenticated answer)")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The public code (or `unavailable`).
        code: String,
        /// `: <message>` of a self-shutdown answer, control characters removed; or empty.
        detail: String,
    },
    /// The TPM that holds the device key failed.
    #[error("device key: {0}")]
    Tpm(#[from] tpm::TpmError),
    /// The server (authenticated) says this device waits for the operator's approval.
    #[error(
        "this device is not approved yet: ask your administrator to approve device {device:?} with PIN {pin} (fingerprint {fingerprint})"
    )]
    DevicePending {
        /// The device name sent.
        device: String,
        /// The device key's PIN.
        pin: String,
        /// The device key's fingerprint.
        fingerprint: String,
    },
    /// The server (authenticated) wants a device signature and the profile signs with none.
    #[error(
        "the server requires device authentication (device_required): run `xdpgate client device enable --profile PROFILE` on this device first"
    )]
    DeviceRequired,
    /// The answer is neither a valid sealed response nor an error body.
    #[error("the server's answer (HTTP {status}) cannot be trusted: {detail}")]
    BadAnswer {
        /// HTTP status.
        status: u16,
        /// What is wrong.
        detail: String,
    },
}

impl ClientCommandError {
    /// The public code the server gave, if any.
    pub fn public_code(&self) -> Option<PublicCode> {
        match self {
            Self::Denied { code }
            | Self::Refused { code, .. }
            | Self::EnrollFailed { code, .. } => PublicCode::from_str_code(code),
            Self::EnrollDenied => Some(PublicCode::Denied),
            Self::DevicePending { .. } => Some(PublicCode::DevicePending),
            Self::DeviceRequired => Some(PublicCode::DeviceRequired),
            _ => None,
        }
    }
}

/// `xdpgate client enroll` options.
#[derive(Debug)]
pub struct EnrollOptions<'a> {
    /// The link the operator handed out.
    pub link: &'a str,
    /// Where to write the profile.
    pub profile: &'a Path,
    /// Name shown to the operator (default: the host name).
    pub device_name: Option<&'a str>,
    /// Replace an existing profile.
    pub force: bool,
}

/// Redeems an enrollment link and writes the profile (mode 0600). Returns the text to print.
pub async fn enroll(options: &EnrollOptions<'_>) -> Result<String, ClientCommandError> {
    let link: EnrollmentLink = options.link.parse()?;
    if options.profile.exists() && !options.force {
        return Err(ClientCommandError::ProfileExists(
            options.profile.to_owned(),
        ));
    }
    let device_name = enroll_device_name(options.device_name);
    let endpoint = Endpoint::parse(&link.base_url)?;
    let pin = tls::parse_pin_hex(&link.cert_sha256)?;
    let tls_config = Arc::new(tls::pinned_client_config(vec![pin])?);
    // Check the pin and the way there before the slow key generation.
    let probe = HttpsRequest {
        method: http::Method::GET,
        path: "/healthz",
        headers: Vec::new(),
        body: Vec::new(),
    };
    https::send(&endpoint, tls_config.clone(), probe, REQUEST_TIMEOUT, 1024).await?;

    eprintln!(
        "generating an RSA-{} key pair for this device (this takes a few seconds)...",
        approval::RSA_GENERATED_BITS
    );
    let rsa_key = tokio::task::spawn_blocking(ClientRsaKey::generate)
        .await
        .map_err(|err| {
            ClientCommandError::BadEnrollAnswer(format!("key generation task failed: {err}"))
        })??;
    let request = EnrollRequest {
        token: link.token.clone(),
        rsa_public_key_pem: rsa_key.public_key().to_pem()?,
        device_name,
    };
    // Boxed to the controller's key from the link: the web front relays ciphertext only.
    let (sealed, pending) =
        enrollment::seal_request(&request, link.controller_box_key, link.controller.clone())?;
    let body = sealed.to_json()?;
    let reply = https::send(
        &endpoint,
        tls_config,
        HttpsRequest::post_json(enrollment::ENROLL_PATH, body),
        REQUEST_TIMEOUT,
        MAX_ENROLL_REPLY_BYTES,
    )
    .await?;
    match reply.status {
        200 => {}
        403 => return Err(ClientCommandError::EnrollDenied),
        status => {
            return Err(ClientCommandError::EnrollFailed {
                status,
                code: error_code(&reply.body),
            });
        }
    }
    let answer = pending
        .open_answer(&reply.body)
        .map_err(ClientCommandError::EnrollAnswerUntrusted)?;
    let cert = reply
        .server_cert
        .ok_or_else(|| ClientCommandError::BadEnrollAnswer("no server certificate".into()))?;
    let mut profile = ClientProfile::new(
        &answer.client_id,
        &HmacSecret::from_base64(&answer.hmac_secret)?,
        &rsa_key,
        link.controller_box_key,
        link.base_url.trim_end_matches('/'),
        &tls::cert_to_pem(&cert),
        answer.servers.clone(),
    )?;
    let totp = match &answer.totp {
        Some(grant) => {
            let secret = crate::passcode::TotpSecret::from_base32(&grant.secret)
                .map_err(|err| ClientCommandError::BadEnrollAnswer(format!("totp: {err}")))?;
            let rules = crate::passcode::PasscodeRules {
                digits: grant.digits,
                step_secs: grant.period,
                ..crate::passcode::PasscodeRules::default()
            };
            profile.passcode_servers.clone_from(&grant.servers);
            Some((
                secret.otpauth_uri(&rules, "xdpgate", &answer.client_id),
                grant.servers.join(", "),
            ))
        }
        None => None,
    };
    profile.credentials()?;
    write_profile(options.profile, &profile.to_json()?, options.force)?;
    let mut out = format!(
        "enrolled as {} for {}; profile written to {}\n",
        answer.client_id,
        answer.servers.join(", "),
        options.profile.display()
    );
    if let Some((uri, servers)) = totp {
        out.push_str(&format!(
            "{servers} need a passcode: add this key to your authenticator app now (it is shown only once and not saved):\n{}\n",
            uri.as_str()
        ));
    }
    Ok(out)
}

/// The `error` of an `{"error":"…"}` body, or a short description.
fn error_code(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => err.error,
        Err(_) => format!("unexpected body ({} bytes)", body.len()),
    }
}

/// Writes the profile with mode 0600: a new file, or with `force` a temporary file renamed
/// over the old one (so an old file's looser mode is not kept).
pub(crate) fn write_profile(
    path: &Path,
    json: &Zeroizing<String>,
    force: bool,
) -> Result<(), ClientCommandError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ClientCommandError::ProfileIo { path, source }
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let target = if force {
        temp_path(path)
    } else {
        path.to_owned()
    };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)?;
        file.write_all(json.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        if force {
            std::fs::rename(&target, path)?;
        }
        Ok(())
    })();
    if result.is_err() && force {
        let _ = std::fs::remove_file(&target);
    }
    result.map_err(|source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists && !force {
            ClientCommandError::ProfileExists(path.to_owned())
        } else {
            io(path)(source)
        }
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The host name, or `None`.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Keeps printable characters, at most `max_chars` of them.
fn clean_name(name: &str, max_chars: usize) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

fn enroll_device_name(given: Option<&str>) -> String {
    let name = clean_name(
        given
            .map(str::to_owned)
            .or_else(host_name)
            .as_deref()
            .unwrap_or(""),
        enrollment::MAX_DEVICE_NAME_LEN,
    );
    if name.trim().is_empty() {
        "xdpgate-client".to_owned()
    } else {
        name
    }
}

/// The device name for a request: at most 128 bytes, no control characters, may be empty.
fn request_device_name(given: Option<&str>) -> String {
    let mut name = clean_name(
        given
            .map(str::to_owned)
            .or_else(host_name)
            .as_deref()
            .unwrap_or(""),
        128,
    );
    while name.len() > 128 {
        name.pop();
    }
    name
}

/// `xdpgate client connect` options.
#[derive(Debug)]
pub struct ConnectOptions<'a> {
    /// The profile file.
    pub profile: &'a Path,
    /// The server to ask for (default: the profile's only server).
    pub server: Option<&'a str>,
    /// This client's public IPv4 address, if known.
    pub public_ipv4: Option<Ipv4Addr>,
    /// This client's public IPv6 address, if known.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Device name sent in the request (default: the host name).
    pub device_name: Option<&'a str>,
    /// Print JSON instead of a sentence.
    pub json: bool,
    /// The passcode of the second factor; without it, a server that needs one is asked for
    /// it on the terminal when there is one.
    pub passcode: Option<&'a str>,
}

/// An approval, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Approval {
    /// Always true (a denial is an error).
    pub approved: bool,
    /// Always `allow`.
    pub verdict: Verdict,
    /// The server approved for.
    pub server: String,
    /// Where to connect.
    pub connect: ConnectTarget,
    /// The addresses opened.
    pub opened: Vec<std::net::IpAddr>,
    /// When the opening expires, Unix seconds.
    pub expires: u64,
    /// The OpenVPN username and one-time password of this approval (never printed).
    #[serde(skip)]
    pub openvpn: OpenVpnCredentials,
}

/// What OpenVPN's `--auth-user-pass FILE` needs: the client id and the approval's one-time
/// token (see docs/OPENVPN.md). `Debug` does not show the password.
#[derive(Clone, Default)]
pub struct OpenVpnCredentials {
    /// The client id.
    pub username: String,
    /// The one-time token.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for OpenVpnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenVpnCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Like [`connect`], and with `openvpn_auth` writes the approval's OpenVPN credentials there
/// (`username` and `password` lines, mode 0600) for OpenVPN's `--auth-user-pass FILE`.
pub async fn connect_with(
    options: &ConnectOptions<'_>,
    openvpn_auth: Option<&Path>,
) -> Result<String, ClientCommandError> {
    let approval = request_approval(options).await?;
    if let Some(path) = openvpn_auth {
        let text = Zeroizing::new(format!(
            "{}\n{}",
            approval.openvpn.username,
            approval.openvpn.password.as_str()
        ));
        write_profile(path, &text, true)?;
    }
    format_approval(&approval, options.json)
}

/// Asks for approval; `Ok` (the text to print) only when the server approved.
pub async fn connect(options: &ConnectOptions<'_>) -> Result<String, ClientCommandError> {
    let approval = request_approval(options).await?;
    format_approval(&approval, options.json)
}

fn format_approval(approval: &Approval, json: bool) -> Result<String, ClientCommandError> {
    if json {
        let mut text =
            serde_json::to_string(approval).map_err(|err| ClientCommandError::BadAnswer {
                status: 200,
                detail: err.to_string(),
            })?;
        text.push('\n');
        return Ok(text);
    }
    Ok(describe(approval))
}

/// Reads the profile, sends one approval request and opens the sealed answer.
pub async fn request_approval(
    options: &ConnectOptions<'_>,
) -> Result<Approval, ClientCommandError> {
    let profile = read_profile(options.profile)?;
    let credentials = profile.credentials()?;
    let server = choose_server(&profile, options.server)?;
    let endpoint = Endpoint::parse(&profile.web_endpoint)?;
    // The anchor's certificate or its key: a renewed web certificate keeps working.
    let tls_config = Arc::new(tls::anchored_client_config(&profile.tls_anchor_pem)?);
    let (mut public_ipv4, mut public_ipv6) = (options.public_ipv4, options.public_ipv6);
    if public_ipv4.is_none() && public_ipv6.is_none() {
        // Report the address the gateway sees us from (behind NAT, our public one): under the
        // default address policy only an address both seen and reported is opened.
        match own_address(&endpoint, tls_config.clone()).await? {
            IpAddr::V4(v4) => public_ipv4 = Some(v4),
            IpAddr::V6(v6) => public_ipv6 = Some(v6),
        }
    }
    let params = RequestParams {
        server: server.clone(),
        public_ipv4,
        public_ipv6,
        client_version: CLIENT_VERSION.to_owned(),
        device_name: request_device_name(options.device_name),
        passcode: passcode_for(&profile, &server, options.passcode)?,
    };
    let now = crate::clock::unix_secs();
    // The TPM signs (blocking, a few ms); the key is made again from its template each time.
    let mut device_key = device::profile_device_key(&profile)?;
    let (request, pending) = approval::build_request_with_device(
        &credentials,
        &params,
        now,
        device_key
            .as_mut()
            .map(|k| k as &mut dyn crate::device::DeviceSigner),
    )?;
    let device_print = device_key.as_ref().map(|k| {
        use crate::device::DeviceSigner as _;
        k.public_key().fingerprint()
    });
    drop(device_key);
    let body = request.to_json().map_err(approval::ClientError::from)?;
    let reply = https::send(
        &endpoint,
        tls_config,
        HttpsRequest::post_json(approval::REQUEST_PATH, body),
        REQUEST_TIMEOUT,
        approval::MAX_RESPONSE_BODY_BYTES,
    )
    .await?;
    let payload = match approval::open_response(&credentials, &pending, &reply.body) {
        Ok(payload) => payload,
        Err(sealed_err) => {
            let refused = refusal(
                &credentials,
                &pending,
                reply.status,
                &reply.body,
                &sealed_err,
            );
            // Only an authenticated (sealed) answer says pending or required.
            return Err(match (refused, device_print) {
                (ClientCommandError::Denied { code }, Some(fp)) if code == "device_pending" => {
                    ClientCommandError::DevicePending {
                        device: params.device_name.clone(),
                        pin: fp.pin(),
                        fingerprint: fp.to_hex(),
                    }
                }
                (ClientCommandError::Denied { code }, _) if code == "device_required" => {
                    ClientCommandError::DeviceRequired
                }
                (other, _) => other,
            });
        }
    };
    if let Some(update) = payload.box_key_update {
        adopt_box_key(options.profile, profile, update)?;
    }
    let openvpn = OpenVpnCredentials {
        username: credentials.client_id().to_owned(),
        password: crate::vpn::derive_token(
            credentials.hmac_secret(),
            &server,
            pending.request_nonce(),
        ),
    };
    approval_from(server, payload, openvpn)
}

/// The server rotated its box key (§16) and this verified answer names the new one: the
/// profile is rewritten (0600, through a rename) to box every later request to it.
fn adopt_box_key(
    path: &Path,
    mut profile: ClientProfile,
    update: approval::BoxKeyUpdate,
) -> Result<(), ClientCommandError> {
    let key = approval::BoxPublicKey::from_bytes(update.public_key).to_base64();
    if profile.server_box_public_key == key {
        return Ok(());
    }
    profile.server_box_public_key = key;
    write_profile(path, &profile.to_json()?, true)?;
    tracing::info!(
        profile = %path.display(),
        previous_key_until = update.previous_key_until,
        "the server rotated its box key; the profile now uses the new key"
    );
    Ok(())
}

/// The passcode to send: the one given, else (for a server that needs one) one typed at the
/// terminal, else none (the server then answers `passcode_required`).
fn passcode_for(
    profile: &ClientProfile,
    server: &str,
    given: Option<&str>,
) -> Result<Option<String>, ClientCommandError> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if let Some(given) = given {
        return Ok(Some(given.trim().to_owned()));
    }
    if !profile.passcode_servers.iter().any(|s| s == server) || !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    eprint!("passcode for {server}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| ClientCommandError::BadAnswer {
            status: 0,
            detail: format!("reading the passcode: {err}"),
        })?;
    Ok(Some(line.trim().to_owned()).filter(|p| !p.is_empty()))
}

/// Asks the web front which address it sees us from (`GET /v1/address`).
async fn own_address(
    endpoint: &Endpoint,
    tls_config: Arc<rustls::ClientConfig>,
) -> Result<IpAddr, ClientCommandError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddressBody {
        address: IpAddr,
    }
    let reply = https::send(
        endpoint,
        tls_config,
        HttpsRequest::new(http::Method::GET, approval::ADDRESS_PATH),
        REQUEST_TIMEOUT,
        1024,
    )
    .await?;
    match serde_json::from_slice::<AddressBody>(&reply.body) {
        Ok(body) if reply.status == 200 => Ok(body.address.to_canonical()),
        Ok(_) | Err(_) => match serde_json::from_slice::<ErrorBody>(&reply.body) {
            // An error code (e.g. `shutdown`, `rate_limited`): an unauthenticated hint.
            Ok(err) if reply.status != 200 => Err(refused(reply.status, err)),
            _ => Err(ClientCommandError::BadAnswer {
                status: reply.status,
                detail: format!("{} did not answer with an address", approval::ADDRESS_PATH),
            }),
        },
    }
}

/// An unsealed error answer: a hint only. The server's message (e.g. a shutdown notice's),
/// without control characters and at most 512 of them, goes after the code.
fn refused(status: u16, err: ErrorBody) -> ClientCommandError {
    let detail = err
        .message
        .map(|m| {
            format!(
                ": {}",
                m.chars()
                    .filter(|c| !c.is_control())
                    .take(512)
                    .collect::<String>()
            )
        })
        .unwrap_or_default();
    ClientCommandError::Refused {
        status,
        code: err.error,
        detail,
    }
}

/// What a non-approval answer means: a sealed denial that opens for this request is
/// authenticated ([`ClientCommandError::Denied`]); a plain error body is only a hint
/// ([`ClientCommandError::Refused`]); a sealed denial that does not open is not trusted.
fn refusal(
    credentials: &approval::ClientCredentials,
    pending: &approval::PendingApproval,
    status: u16,
    body: &[u8],
    sealed_err: &approval::ClientError,
) -> ClientCommandError {
    if let Ok(denial) = serde_json::from_slice::<serde_json::Value>(body)
        && denial.get("sealed").is_some()
    {
        return match approval::open_denial(credentials, pending, body) {
            Ok(code) => ClientCommandError::Denied {
                code: code.as_str().to_owned(),
            },
            Err(err) => ClientCommandError::BadAnswer {
                status,
                detail: format!("a sealed denial that does not verify: {err}"),
            },
        };
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => refused(status, err),
        Err(_) => ClientCommandError::BadAnswer {
            status,
            detail: sealed_err.to_string(),
        },
    }
}

fn approval_from(
    server: String,
    payload: ResponsePayload,
    openvpn: OpenVpnCredentials,
) -> Result<Approval, ClientCommandError> {
    match (payload.verdict, payload.connect, payload.expires_unix) {
        (Verdict::Allow, Some(connect), Some(expires)) => Ok(Approval {
            approved: true,
            verdict: Verdict::Allow,
            server,
            connect,
            opened: payload.opened,
            expires,
            openvpn,
        }),
        _ => Err(ClientCommandError::Denied {
            code: payload.reason,
        }),
    }
}

pub(crate) fn read_profile(path: &Path) -> Result<ClientProfile, ClientCommandError> {
    let io = |source| ClientCommandError::ProfileIo {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if metadata.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: {} is readable by other users; it holds secrets (chmod 600 it)",
            path.display()
        );
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    Ok(ClientProfile::from_json(&text)?)
}

fn choose_server(
    profile: &ClientProfile,
    asked: Option<&str>,
) -> Result<String, ClientCommandError> {
    match (asked, profile.servers.as_slice()) {
        (Some(name), servers) => {
            if !servers.iter().any(|s| s == name) {
                eprintln!(
                    "warning: {name} is not among the profile's servers ({}); asking anyway",
                    servers.join(", ")
                );
            }
            Ok(name.to_owned())
        }
        (None, [only]) => Ok(only.clone()),
        (None, servers) => Err(ClientCommandError::ChooseServer(servers.join(", "))),
    }
}

/// `approved: connect to HOST:PORT/PROTO (opened ADDRS until T)`.
pub fn describe(approval: &Approval) -> String {
    let host = match (approval.connect.host_ipv4, approval.connect.host_ipv6) {
        (Some(v4), _) => v4.to_string(),
        (None, Some(v6)) => format!("[{v6}]"),
        (None, None) => "?".to_owned(),
    };
    let protocol = match approval.connect.protocol {
        TransportProtocol::Udp => "udp",
        TransportProtocol::Tcp => "tcp",
    };
    let opened: Vec<String> = approval.opened.iter().map(ToString::to_string).collect();
    format!(
        "approved: connect to {host}:{}/{protocol} (opened {} until {})\n",
        approval.connect.port,
        opened.join(", "),
        format_utc(approval.expires)
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_003_600), "2023-11-14T23:13:20Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn description_names_host_port_protocol_and_addresses() {
        let approval = Approval {
            approved: true,
            verdict: Verdict::Allow,
            server: "vpn1".into(),
            connect: ConnectTarget {
                host_ipv4: None,
                host_ipv6: Some("2001:db8::1".parse().unwrap()),
                port: 1194,
                protocol: TransportProtocol::Udp,
            },
            opened: vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
            expires: 1_700_003_600,
            openvpn: OpenVpnCredentials {
                username: "alice".into(),
                password: Zeroizing::new("s3cret".into()),
            },
        };
        assert!(
            !format!("{approval:?}").contains("s3cret"),
            "Debug hides the OpenVPN password"
        );
        assert_eq!(
            describe(&approval),
            "approved: connect to [2001:db8::1]:1194/udp (opened 203.0.113.7, 2001:db8::7 until 2023-11-14T23:13:20Z)\n"
        );
        let json = serde_json::to_value(&approval).unwrap();
        assert_eq!(json["connect"]["port"], 1194);
        assert_eq!(json["verdict"], "allow");
        assert_eq!(json["approved"], true);
        assert!(json.get("openvpn").is_none(), "the token is never printed");
    }

    #[test]
    fn device_names_are_cleaned() {
        assert_eq!(enroll_device_name(Some("lap\ntop")), "laptop");
        assert_eq!(
            enroll_device_name(Some(&"x".repeat(100))).chars().count(),
            enrollment::MAX_DEVICE_NAME_LEN
        );
        assert_eq!(enroll_device_name(Some("\n")), "xdpgate-client");
        assert_eq!(request_device_name(Some(&"é".repeat(100))).len(), 128);
    }

    #[test]
    fn profile_is_written_0600_and_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/profile.json");
        write_profile(&path, &Zeroizing::new("{}".into()), false).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(matches!(
            write_profile(&path, &Zeroizing::new("{}".into()), false),
            Err(ClientCommandError::ProfileExists(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_profile(&path, &Zeroizing::new(r#"{"new":1}"#.into()), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"new\":1}\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "force replaces the looser mode"
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
