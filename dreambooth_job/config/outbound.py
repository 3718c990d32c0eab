"""Where a URL a tenant names (--notify-url) may lead: a public address only, unless the operator
allows more. Loopback, link-local (where cloud metadata answers: 169.254.169.254), private,
unique-local, multicast, unspecified, reserved and other non-global addresses are internal, also
when written as IPv4-mapped or -embedding IPv6 (`[::ffff:169.254.169.254]`) or in the decimal,
octal and hex forms resolvers accept (`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`).

    check_literal(url)           # no DNS: submit, batch and config validation (exit 2 upstream)
    checked_addresses(host, 80)  # resolved, every address checked: InternalAddressError
    public_opener(...)           # urllib's opener whose connections go to checked addresses only

A name is resolved once and the connection made to an address that was checked, so a second
lookup answering otherwise (DNS rebinding) is never used. The operator allows internal receivers
(internal_allowed) with an allow-list that names the host, or ALLOW_PRIVATE_NOTIFY.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from dreambooth_job.config.operator_policy import ALLOW_PRIVATE_NOTIFY_ENV, ENV_PREFIX, OperatorPolicy

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes whose last 32 bits are an IPv4 address a packet may reach: NAT64's well-known
# prefix and the deprecated IPv4-compatible addresses (IPv4-mapped, 6to4 and Teredo have
# ipaddress properties of their own).
_EMBEDDING_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_KINDS = (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
          ("is_multicast", "a multicast address"), ("is_unspecified", "the unspecified address"),
          ("is_private", "a private address"), ("is_reserved", "a reserved address"))
# socket.create_connection's "no timeout given" default, which http.client passes on.
_DEFAULT_TIMEOUT = socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]  # private, not in typeshed
ALLOWANCE = (f"an operator allows one by naming the host in {ENV_PREFIX}ALLOWED_HOSTS or with "
             f"{ALLOW_PRIVATE_NOTIFY_ENV}=true")


def internal_allowed(policy: OperatorPolicy) -> bool:
    """Whether a tenant's URL may lead to an internal address: the operator said so, or set an
    allow-list (allows_host then admits only the hosts it names, which the operator vetted)."""
    return policy.allow_private_notify or policy.allowed_hosts is not None


class InternalAddressError(OSError):
    """A destination that is, or resolves to, an internal address (an OSError: the completion
    call treats it as any receiver it could not reach)."""


def internal_kind(address: Address) -> str | None:
    """What makes `address` internal ("a loopback address", ...), or None for a public one. An
    IPv6 address that carries an IPv4 one is what that IPv4 address is."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and int(address) > 1:  # :: and ::1 are what they are
        kind = internal_kind(embedded)
        return f"{kind} (as {embedded})" if kind else None
    for attribute, kind in _KINDS:
        if getattr(address, attribute):
            if attribute == "is_private" and address.version == 6 and address in _UNIQUE_LOCAL:
                return "a unique-local address"
            return kind
    return None if address.is_global else "an address that is not globally routable"


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if address.version == 4:
        return None
    if address.ipv4_mapped or address.sixtofour:
        return address.ipv4_mapped or address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if any(address in network for network in _EMBEDDING_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> Address | None:
    """`host` as an IP address when it is one in any form a resolver takes, else None (a name)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone (%eth0) names no address
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # 2852039166, 0xa9fea9fe, 127.1, ...
    except (OSError, ValueError):
        return None


def check_literal(url: str) -> str | None:
    """Why `url`'s host is internal without asking DNS (an IP address in any form, `localhost`),
    or None."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback name"
    address = literal_address(host)
    kind = internal_kind(address) if address is not None else None
    if kind is None:
        return None
    return f"{host} is {kind}" if str(address) == host else f"{host} is {address}, {kind}"


def checked_addresses(host: str, port: int) -> list[tuple]:
    """getaddrinfo's answers for `host`, every one public; InternalAddressError naming the first
    internal one (socket.gaierror when the name does not resolve)."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        kind = internal_kind(address)
        if kind:
            raise InternalAddressError(f"{host} resolves to {address}, {kind}")
    return answers


def connect_public(address: tuple[str, int], timeout: float | None = _DEFAULT_TIMEOUT,
                   source_address: tuple[str, int] | None = None) -> socket.socket:
    """socket.create_connection to a host whose every address is public: resolved once, and the
    connection made to one of the checked addresses, never to a second lookup's answer."""
    host, port = address
    error: OSError = OSError(f"{host} resolves to no address")
    for *_, sockaddr in checked_addresses(host, port):
        try:
            return socket.create_connection((sockaddr[0], port), timeout, source_address)
        except OSError as exc:
            error = exc
    raise error


class _PublicConnection:
    """An http.client connection whose socket comes from connect_public."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = connect_public


class _PublicHTTPConnection(_PublicConnection, http.client.HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicConnection, http.client.HTTPSConnection):
    pass  # TLS as usual: the certificate is checked against the URL's host name


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = self._context  # type: ignore[attr-defined]  # HTTPSHandler's private SSL context
        return self.do_open(_PublicHTTPSConnection, req, context=context)


def public_opener(*handlers: urllib.request.BaseHandler | type[urllib.request.BaseHandler]
                  ) -> urllib.request.OpenerDirector:
    """urllib's opener (with `handlers`) that connects to public addresses only, and directly: a
    proxy from the environment would resolve the host itself, past the check."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _PublicHTTPHandler,
                                       _PublicHTTPSHandler, *handlers)
