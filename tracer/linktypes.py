"""pcap ``LINKTYPE_*`` numbers of the frames hoptrace decodes (the core's decoder,
crates/hoptrace-core/src/decode.rs, takes the same numbers).

Ethernet (+802.1Q/802.1ad/QinQ), Linux cooked v1 (SLL) and v2 (SLL2, ``tcpdump -i
any``: it carries the interface index), raw IP, raw IPv4 and raw IPv6.
"""

from __future__ import annotations

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
# DLT_RAW's numeric value differs by OS (12 most places, 14 on OpenBSD); both mean raw IP.
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14})
SUPPORTED_LINKTYPES = frozenset(
    {LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6}
    | RAW_LINKTYPES
)
