// skb_hops.c — one event per packet per hop, from raw tracepoints (bcc).
//
// netif_receive_skb (rx), net_dev_start_xmit (tx) and kfree_skb (drop), in
// every network namespace. Loaded by probes/skb_hops.py, which passes every
// kernel struct offset as -DHT_OFF_* (read from the running kernel's BTF by
// probes/btf.py) and every raw tracepoint argument index as -DHT_ARG_*.
// Nothing here uses a kernel header's struct layout: the headers bcc
// compiles against are Debian's, not the running kernel's. The #ifndef
// defaults below only let the file compile on its own; the loader always
// overrides them.
//
// Transport: hop events are staged per CPU and written to the ring buffer
// several per record (struct hop_batch) with BPF_RB_NO_WAKEUP; userspace
// polls on a timer. A wake-up per event costs ~7 us on the packet path here
// (DESIGN.md, "Measured on this box"). Staged events are flushed when the
// stage is full, when it is older than HT_FLUSH_NS, or by the loader running
// flush_stage() on each CPU (BPF_PROG_TEST_RUN) when a CPU goes quiet.

#ifndef HT_OFF_SKB_HEAD
#define HT_OFF_SKB_HEAD 192
#define HT_OFF_SKB_DATA 200
#define HT_OFF_SKB_LEN 112
#define HT_OFF_SKB_DATA_LEN 116
#define HT_OFF_SKB_NETWORK_HEADER 180
#define HT_OFF_SKB_MAC_HEADER 182
#define HT_OFF_SKB_TRANSPORT_HEADER 178
#define HT_OFF_SKB_PROTOCOL 176
#define HT_OFF_SKB_DEV 16
#define HT_OFF_DEV_IFINDEX 224
#define HT_OFF_DEV_NAME 280
#define HT_OFF_DEV_ND_NET 264
#define HT_OFF_NET_NS 152
#define HT_OFF_NS_INUM 24
#endif
#ifndef HT_OFF_SKB_SK
#define HT_OFF_SKB_SK 24
#define HT_OFF_SK_NET 48
#endif
#ifndef HT_SKB_LO
#define HT_SKB_LO 112 // [LO, HI): the sk_buff bytes that hold every field above
#define HT_SKB_HI 208
#define HT_DEV_LO 224 // [LO, HI): the net_device bytes for ifindex, nd_net, name
#define HT_DEV_HI 296
#endif
#ifndef HT_ARG_NETIF_RECEIVE_SKB_SKB
#define HT_ARG_NETIF_RECEIVE_SKB_SKB 0
#define HT_ARG_NET_DEV_START_XMIT_SKB 0
#define HT_ARG_NET_DEV_START_XMIT_DEV 1
#define HT_ARG_KFREE_SKB_SKB 0
#define HT_ARG_KFREE_SKB_REASON 2
#endif
#ifndef HT_SNAPLEN
#define HT_SNAPLEN 128 // bytes of frame per event; a multiple of 8
#endif
#ifndef HT_BATCH
#define HT_BATCH 32 // hop events per ring record
#endif
#ifndef HT_FLUSH_NS
#define HT_FLUSH_NS 1000000ULL
#endif
#ifndef HT_RING_PAGES
#define HT_RING_PAGES 4096
#endif
#ifndef HT_SAMPLE_HEAD
#define HT_SAMPLE_HEAD 4 // ICMP echoes with a sequence below this are always kept (F_SAMPLE)
#endif
#ifndef HT_REASON_MAX_IGNORED
#define HT_REASON_MAX_IGNORED 1 // SKB_DROP_REASON_NOT_DROPPED_YET=0, SKB_CONSUMED=1
#endif

#define HT_IFNAMSIZ 16

// HT_TP_BTF: the three programs are BTF-typed raw tracepoints (tp_btf), loaded
// and attached by skb_hops.py (bcc has no tp_btf section). Their arguments are
// kernel pointers the verifier knows the type of, so the sk_buff, net_device,
// struct net and sock fields are plain loads, checked against the kernel's BTF
// when the program loads and JITed with a fault fixup (a bad pointer reads 0,
// as bpf_probe_read_kernel would) — no helper call: each of the two
// bpf_probe_read_kernel calls they replace cost ~38 ns a hop here
// (BPF_ENABLE_STATS). Written as inline asm: bcc rewrites a C dereference of
// such a pointer into bpf_probe_read. Without HT_TP_BTF (a kernel that refuses
// tp_btf): plain raw tracepoints reading through bpf_probe_read_kernel.
#ifdef HT_TP_BTF
#define HT_LD(width, base, off)                                                                    \
    ({                                                                                             \
        u64 __v;                                                                                   \
        asm volatile("%0 = *(u" #width " *)(%1 + %2)" : "=r"(__v) : "r"(base), "i"(off));          \
        __v;                                                                                       \
    })
#endif
#define HT_UNSET_HDR 0xffff // (typeof(skb->mac_header))~0U

// Mirrored by class HopKind(IntEnum) in skb_hops.py.
enum hop_kind {
    HOP_RX = 1,
    HOP_TX = 2,
    HOP_DROP = 3,
};

// Mirrored field for field by class HopEvent(ctypes.Structure) in skb_hops.py.
struct hop_event {
    u64 ts_ns;         // bpf_ktime_get_ns()
    u64 skb;           // struct sk_buff address: the same skb crosses veth/bridge/netns
    u32 netns;         // dev->nd_net.net->ns.inum, else skb->sk's namespace, else 0
    u32 ifindex;       // dev->ifindex, 0 if no device
    u32 len;           // skb->len
    u32 drop_reason;   // enum skb_drop_reason (kfree_skb only)
    u32 wire_len;      // frame length from the first captured byte
    u16 cap_len;       // valid bytes in frame[]
    u16 mac_len;       // L2 header bytes at the start of frame[]; 0 = frame starts at L3
    u16 protocol;      // skb->protocol, network byte order as stored
    u8 kind;           // enum hop_kind
    u8 pad;
    char ifname[HT_IFNAMSIZ];
    u8 frame[HT_SNAPLEN];
};

// One ring record: mirrored by HEADER in skb_hops.py (count, then events).
struct hop_batch {
    u32 count;
    u32 busy;       // nesting guard: a softirq may interrupt a program on this CPU
    u64 first_ts;
    struct hop_event ev[HT_BATCH];
};

struct hop_single {
    u32 count;
    u32 busy;
    u64 first_ts;
    struct hop_event ev[1];
};

// Filter switches in config[0].flags; the sets are filled by the loader and
// may change while running.
#define F_NETNS 1
#define F_PROTO 2
#define F_ADDR 4
#define F_PORT 8
#define F_TRACK 16 // an skb that matched once passes at every later hop
#define F_SAMPLE 32 // one packet in N: see sample_keep()
// Set by the loader once the sets are filled: bcc attaches the programs as it
// loads them, before any map can be written, and while a filter changes.
#define F_READY (1u << 31)

// Small netns and protocol sets live in the config value itself: an array
// lookup is inlined by the verifier, a hash lookup is a helper call that
// costs more than the compares (measured with BPF_ENABLE_STATS).
#define HT_NETNS_INLINE 8
#define HT_SET_INLINE 8 // ports and addresses, likewise
struct ht_config {
    u32 flags;
    u32 n_netns;                 // F_NETNS: inodes in netns[], 0 = look them up in netns_set
    u32 netns[HT_NETNS_INLINE];
    u32 protos[8];               // F_PROTO: bit p of this 256-bit set = IP protocol p passes
    u32 sample_thresh;           // F_SAMPLE: a packet whose hash is below this is kept (2^32 / N)
    u32 n_ports;                 // F_PORT: ports in ports[], 0 = look them up in port_set
    u32 ports[HT_SET_INLINE];
    u32 n_addrs;                 // F_ADDR: keys in addrs[] (struct addr_key as two u64 each), 0 = addr_set
    u32 pad;
    u64 addrs[2 * HT_SET_INLINE];
};

struct addr_key {
    u8 a[16]; // IPv4 in the first 4 bytes, rest 0
};

// counters[]: mirrored by class Counter(IntEnum) in skb_hops.py
#define C_LOST 0     // events that found the ring full
#define C_EMITTED 1  // events written to the ring
#define C_FILTERED 2 // events the in-kernel filter rejected
#define C_NESTED 3   // events written alone because the stage was busy
#define C_SAMPLED 4  // events that passed the filter but sampling (F_SAMPLE) skipped

BPF_RINGBUF_OUTPUT(events, HT_RING_PAGES);
BPF_PERCPU_ARRAY(stage, struct hop_batch, 1);
BPF_PERCPU_ARRAY(counters, u64, 5);
BPF_ARRAY(config, struct ht_config, 1);
BPF_HASH(netns_set, u32, u8, 1024);
BPF_HASH(addr_set, struct addr_key, u8, 1024);
BPF_HASH(port_set, u32, u8, 1024);
// skb address -> identity of the packet that matched: addresses are reused
// after free, so a hit also needs the same NAT-invariant identity, recently.
struct track_val {
    u64 ts_ns;
    u32 ident; // IPv4: ip_id << 16 | total length; IPv6: payload length
    u32 proto;
};
BPF_TABLE("lru_hash", u64, struct track_val, tracked, 65536);
#define HT_TRACK_NS 100000000ULL // a packet crosses every hop well within 100 ms

// Raw tracepoints only (tp_btf reads the inode with one load). struct net
// address -> its namespace inode, per CPU: the inode is one more
// bpf_probe_read_kernel (dev->nd_net->ns.inum: ~35 ns of a hop's ~235 ns here,
// measured with BPF_ENABLE_STATS) that every hop of a flood repeats for the
// same few namespaces. A struct net's inode never changes while it lives; its
// address can be reused once it is freed, which takes at least an RCU grace
// period after its last packet, so an entry is trusted only within the jiffy
// it was read in (bpf_jiffies64, inlined by the verifier: no helper call).
// Direct-mapped; gen is odd while a slot is written, so a program that nests
// on this CPU (an interrupt) and rewrites the slot a reader is in the middle
// of makes that reader miss, never read half an entry.
#define HT_NETNS_CACHE 16 // a power of two
struct netns_cache {
    u64 gen;
    u64 net[HT_NETNS_CACHE];
    u64 tick[HT_NETNS_CACHE];
    u32 inum[HT_NETNS_CACHE];
};
BPF_PERCPU_ARRAY(netns_cache, struct netns_cache, 1);

static __always_inline void count(int idx, u64 n) {
    u64 *c = counters.lookup(&idx);
    if (c)
        __sync_fetch_and_add(c, n);
}

static __always_inline u64 rd64(void *base, int off) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u32 rd32(void *base, int off) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u16 rd16(void *base, int off) {
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

// The namespace inode of struct net *netp (0 if unreadable), from netns_cache when it
// was read on this CPU within the current jiffy.
static __always_inline u32 net_inum(void *netp) {
    u64 tick = bpf_jiffies64();
    u32 slot = (u32)(((u64)netp * 0x9E3779B97F4A7C15ULL) >> 32) & (HT_NETNS_CACHE - 1);
    int zero = 0;
    struct netns_cache *c = netns_cache.lookup(&zero);
    if (c) {
        u64 gen = *(volatile u64 *)&c->gen;
        u64 net = *(volatile u64 *)&c->net[slot];
        u64 when = *(volatile u64 *)&c->tick[slot];
        u32 inum = *(volatile u32 *)&c->inum[slot];
        if (net == (u64)netp && when == tick && !(gen & 1) && *(volatile u64 *)&c->gen == gen)
            return inum;
    }
    u32 inum = rd32(netp, HT_OFF_NET_NS + HT_OFF_NS_INUM);
    if (c && inum) {
        u64 gen = *(volatile u64 *)&c->gen;
        *(volatile u64 *)&c->gen = gen + 1;
        *(volatile u64 *)&c->net[slot] = (u64)netp;
        *(volatile u64 *)&c->tick[slot] = tick;
        *(volatile u32 *)&c->inum[slot] = inum;
        *(volatile u64 *)&c->gen = gen + 2;
    }
    return inum;
}

static __always_inline int netns_ok(struct ht_config *cfg, u32 netns) {
    u32 n = cfg->n_netns;
    if (n == 0)
        return netns_set.lookup(&netns) != 0;
#pragma unroll
    for (int i = 0; i < HT_NETNS_INLINE; i++) {
        if (i < n && cfg->netns[i] == netns)
            return 1;
    }
    return 0;
}

static __always_inline int ports_ok(struct ht_config *cfg, u32 sp, u32 dp) {
    u32 n = cfg->n_ports;
    if (n == 0)
        return port_set.lookup(&sp) || port_set.lookup(&dp);
#pragma unroll
    for (int i = 0; i < HT_SET_INLINE; i++) {
        if (i < n && (cfg->ports[i] == sp || cfg->ports[i] == dp))
            return 1;
    }
    return 0;
}

// The same key equality as addr_set's (16 bytes, IPv4 in the first 4).
static __always_inline int addrs_ok(struct ht_config *cfg, struct addr_key *s, struct addr_key *d) {
    u32 n = cfg->n_addrs;
    if (n == 0)
        return addr_set.lookup(s) || addr_set.lookup(d);
    u64 s0, s1, d0, d1;
    __builtin_memcpy(&s0, &s->a[0], 8);
    __builtin_memcpy(&s1, &s->a[8], 8);
    __builtin_memcpy(&d0, &d->a[0], 8);
    __builtin_memcpy(&d1, &d->a[8], 8);
#pragma unroll
    for (int i = 0; i < HT_SET_INLINE; i++) {
        if (i < n) {
            u64 a0 = cfg->addrs[2 * i], a1 = cfg->addrs[2 * i + 1];
            if ((a0 == s0 && a1 == s1) || (a0 == d0 && a1 == d1))
                return 1;
        }
    }
    return 0;
}

static __always_inline u64 ht_mix(u64 h, u64 v) {
    h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 31);
}

// Sampling (F_SAMPLE): the same decision at every hop of one packet, so a kept packet keeps
// its whole path. Only fields NAT leaves alone go into the hash (never addresses, ports,
// the ICMP echo id, TTL or checksums): protocol, IPv4 id, length and fragment field, TCP
// seq/ack/flags, ICMP echo type/code/seq, UDP length, up to 16 payload bytes (UDP, ICMP
// echo). Always kept, so that a flow of few packets is never silenced: non-IP frames, TCP
// SYN/FIN/RST (every connection's start and end), ICMP other than echo (errors), ICMP
// echoes with a sequence below HT_SAMPLE_HEAD (a ping's first packets). The Python twin for
// the pcap backend is tracer/sampling.py keep_mask(). Returns 1 to keep.
static __always_inline int sample_keep(u8 *hdr, u8 ver, u32 proto, u32 l4off, unsigned char *l3,
                                       u32 thresh) {
    u64 h = 0x243F6A8885A308D3ULL ^ proto;
    u32 l4len = 0;
    if (ver == 4) {
        u32 tot = ((u32)hdr[2] << 8) | hdr[3];
        h = ht_mix(h, ((u64)tot << 32) | ((u32)hdr[4] << 24) | ((u32)hdr[5] << 16) |
                          ((u32)hdr[6] << 8) | hdr[7]);
        if (tot > l4off)
            l4len = tot - l4off;
    } else if (ver == 6) {
        l4len = ((u32)hdr[4] << 8) | hdr[5];
        h = ht_mix(h, l4len);
    } else {
        return 1;
    }
    if (l4off) { // 0 for a later fragment: no L4 header
        u8 l4[24] = {};
        bpf_probe_read_kernel(l4, sizeof(l4), l3 + l4off);
        int payload = 0;
        if (proto == 6) {
            if (l4[13] & 0x07) // FIN, SYN, RST
                return 1;
            u64 sa;
            __builtin_memcpy(&sa, &l4[4], 8);
            h = ht_mix(h, sa);
            h = ht_mix(h, l4[13]);
        } else if (proto == 1 || proto == 58) {
            u8 type = l4[0];
            int echo = proto == 1 ? (type == 0 || type == 8) : (type == 128 || type == 129);
            u32 seq = ((u32)l4[6] << 8) | l4[7];
            if (!echo || seq < HT_SAMPLE_HEAD)
                return 1;
            h = ht_mix(h, ((u32)type << 24) | ((u32)l4[1] << 16) | seq);
            payload = 1;
        } else if (proto == 17) {
            h = ht_mix(h, ((u32)l4[4] << 8) | l4[5]);
            payload = 1;
        }
        if (payload) {
#pragma unroll
            for (int off = 8; off < 24; off += 8) {
                if (l4len > off) {
                    u64 w;
                    __builtin_memcpy(&w, &l4[off], 8);
                    // bytes past the packet's end (padding, stale buffer) are no part of it
                    if (l4len < off + 8)
                        w &= (1ULL << ((l4len - off) * 8)) - 1;
                    h = ht_mix(h, w);
                }
            }
        }
    }
    return (u32)(h >> 32) < thresh;
}

// What look() learnt about one hop, before anything is staged or reserved.
struct hop_meta {
    u64 ts_ns;
    unsigned char *start; // first byte of the frame
    u32 netns;
    u32 ifindex;
    u32 len;
    u32 wire_len;
    u32 avail;            // linear bytes readable from start
    u16 mac_len;
    u16 protocol;
    char ifname[HT_IFNAMSIZ];
};

// Read the skb and its device and apply the in-kernel filter; returns 0 when
// the filter rejects the hop, 2 when sampling skips it, 1 to keep it. Runs before the stage or the ring is touched,
// so a rejected hop costs no atomics and no ring space.
#ifdef HT_TP_BTF
// Every field look() needs, read at the very start of a program: before any branch the
// filter makes, so the verifier checks each BTF-typed load on one path, not on each of the
// filter's (it walks the kernel's BTF for every such load it verifies: with the loads inside
// look() each program took 100-190 ms to verify, and live 0.2 s longer to start).
struct skb_fields {
    unsigned char *head, *data;
    u32 len, data_len;
    u16 mac, net, protocol;
    u32 netns, ifindex;
    u64 name0, name1;
};

static __always_inline void read_fields(struct skb_fields *f, void *skb, void *dev) {
    f->head = (unsigned char *)HT_LD(64, skb, HT_OFF_SKB_HEAD);
    f->data = (unsigned char *)HT_LD(64, skb, HT_OFF_SKB_DATA);
    f->mac = HT_LD(16, skb, HT_OFF_SKB_MAC_HEADER);
    f->net = HT_LD(16, skb, HT_OFF_SKB_NETWORK_HEADER);
    f->protocol = HT_LD(16, skb, HT_OFF_SKB_PROTOCOL);
    f->len = HT_LD(32, skb, HT_OFF_SKB_LEN);
    f->data_len = HT_LD(32, skb, HT_OFF_SKB_DATA_LEN);
    u32 netns = 0, ifindex = 0;
    u64 name0 = 0, name1 = 0;
    if (!dev)
        dev = (void *)HT_LD(64, skb, HT_OFF_SKB_DEV);
    if (dev) {
        void *netp = (void *)HT_LD(64, dev, HT_OFF_DEV_ND_NET);
        if (netp)
            netns = HT_LD(32, netp, HT_OFF_NET_NS + HT_OFF_NS_INUM);
        if (netns) // as below: without a namespace the index is not trustworthy
            ifindex = HT_LD(32, dev, HT_OFF_DEV_IFINDEX);
        name0 = HT_LD(64, dev, HT_OFF_DEV_NAME);
        name1 = HT_LD(64, dev, HT_OFF_DEV_NAME + 8);
    }
    if (!netns) {
        void *skp = (void *)HT_LD(64, skb, HT_OFF_SKB_SK);
        if (skp) {
            void *netp = (void *)HT_LD(64, skp, HT_OFF_SK_NET);
            if (netp)
                netns = HT_LD(32, netp, HT_OFF_NET_NS + HT_OFF_NS_INUM);
        }
    }
    f->netns = netns;
    f->ifindex = ifindex;
    f->name0 = name0;
    f->name1 = name1;
}
#define HT_FIELDS_ARG , struct skb_fields *f
#define HT_FIELDS_PASS , &f
#else
#define HT_FIELDS_ARG
#define HT_FIELDS_PASS
#endif

static __always_inline int look(struct hop_meta *m, void *skb, void *dev, u8 kind,
                                struct ht_config *cfg, u32 flags HT_FIELDS_ARG) {
    // One read for the sk_buff fields (skb->dev included when BTF puts it
    // close enough, see probes/btf.py) and one for the net_device fields:
    // each bpf_probe_read_kernel costs tens of ns on the packet path.
    unsigned char *head, *data;
    u16 mac, net, protocol;
    u32 len, data_len;
#ifdef HT_TP_BTF
    head = f->head;
    data = f->data;
    mac = f->mac;
    net = f->net;
    protocol = f->protocol;
    len = f->len;
    data_len = f->data_len;
#else
    u8 sk[HT_SKB_HI - HT_SKB_LO];
    bpf_probe_read_kernel(sk, sizeof(sk), (char *)skb + HT_SKB_LO);
    __builtin_memcpy(&head, &sk[HT_OFF_SKB_HEAD - HT_SKB_LO], 8);
    __builtin_memcpy(&data, &sk[HT_OFF_SKB_DATA - HT_SKB_LO], 8);
    __builtin_memcpy(&mac, &sk[HT_OFF_SKB_MAC_HEADER - HT_SKB_LO], 2);
    __builtin_memcpy(&net, &sk[HT_OFF_SKB_NETWORK_HEADER - HT_SKB_LO], 2);
    __builtin_memcpy(&protocol, &sk[HT_OFF_SKB_PROTOCOL - HT_SKB_LO], 2);
    __builtin_memcpy(&len, &sk[HT_OFF_SKB_LEN - HT_SKB_LO], 4);
    __builtin_memcpy(&data_len, &sk[HT_OFF_SKB_DATA_LEN - HT_SKB_LO], 4);
#endif

    // kfree_skb also frees netlink, unix and other non-network skbs (protocol 0):
    // they are no packet's hop.
    if (kind == HOP_DROP && protocol == 0)
        return 0;

    // Where the frame starts: the mac header when it is set and not past
    // data. On rx (netif_receive_skb) data points at L3 and network_header
    // is not yet reset for this layer, so L3 is at data; on tx data is the
    // mac header and L3 is at network_header.
    unsigned char *start = data;
    if (mac != HT_UNSET_HDR && head + mac <= data)
        start = head + mac;
    unsigned char *l3 = data;
    if (kind != HOP_RX && net != HT_UNSET_HDR && head + net >= start)
        l3 = head + net;
    u32 mac_len = l3 - start;
    if (mac_len > 64) { // garbage headers: treat the frame as starting at L3
        start = l3;
        mac_len = 0;
    }

    // The packet filter's header fields, its protocol check, the address and
    // port sets and the tracked skbs, all before the device and namespace
    // reads: in a flood the filter rejects most hops, and a rejected hop costs
    // two bpf_probe_read_kernel calls (plus the set lookups), not four and a clock.
    u32 proto = 0, ident = 0, l4off = 0;
    u32 sp = 0, dp = 0, have_ports = 0; // from the header read when it holds them
    struct addr_key s = {}, d = {};
    int skip = 0; // sampling skips this hop, once the filter has passed it (counted apart)
    if (flags & (F_PROTO | F_ADDR | F_PORT | F_SAMPLE)) {
        u8 hdr[48] = {}; // an IPv6 header or IPv4 with up to 24 bytes of options, and the ports
        bpf_probe_read_kernel(hdr, sizeof(hdr), l3);
        u8 ver = hdr[0] >> 4;
        if (ver == 4) {
            proto = hdr[9];
            ident = ((u32)hdr[4] << 24) | ((u32)hdr[5] << 16) | ((u32)hdr[2] << 8) | hdr[3];
            __builtin_memcpy(s.a, &hdr[12], 4);
            __builtin_memcpy(d.a, &hdr[16], 4);
            l4off = (hdr[0] & 0xf) * 4;
            if ((hdr[6] & 0x1f) || hdr[7]) // later fragments have no ports
                l4off = 0;
        } else if (ver == 6) {
            proto = hdr[6];
            ident = ((u32)hdr[4] << 8) | hdr[5];
            __builtin_memcpy(s.a, &hdr[8], 16);
            __builtin_memcpy(d.a, &hdr[24], 16);
            l4off = 40;
        } else if (flags & (F_PROTO | F_ADDR | F_PORT)) {
            return 0;
        }
        // The protocol is NAT-invariant and a tracked skb passed this same
        // check when it was recorded: reject before the tracked lookup.
        if (flags & F_PROTO) {
            if (!(cfg->protos[(proto >> 5) & 7] & (1u << (proto & 31))))
                return 0;
        }
        if (l4off && l4off <= sizeof(hdr) - 4) {
            u8 *pp = hdr + (l4off & 63);
            sp = ((u32)pp[0] << 8) | pp[1];
            dp = ((u32)pp[2] << 8) | pp[3];
            have_ports = 1;
        }
        // decided here, while the header is at hand (the stack holds it or the device's bytes)
        if (flags & F_SAMPLE)
            skip = !sample_keep(hdr, ver, proto, l4off, l3, cfg->sample_thresh);
    }

    // F_ADDR, F_PORT: an skb that matched at an earlier hop passes (F_TRACK),
    // else one of its addresses and one of its ports must be in the sets. What
    // this hop changes in `tracked` waits until the namespace check passed it.
    u64 now = 0;
    int hit = 0, track = 0;
    u64 key = (u64)skb;
    if (flags & (F_ADDR | F_PORT)) {
        if (flags & F_TRACK) {
            struct track_val *tv = tracked.lookup(&key);
            if (tv && tv->proto == proto && tv->ident == ident) {
                now = bpf_ktime_get_ns();
                hit = now - tv->ts_ns < HT_TRACK_NS;
            }
        }
        if (!hit) {
            if (flags & F_ADDR) {
                if (!addrs_ok(cfg, &s, &d))
                    return 0;
            }
            if (flags & F_PORT) {
                if (!l4off || (proto != 6 && proto != 17 && proto != 132))
                    return 0;
                if (!have_ports) {
                    u16 ports[2] = {};
                    bpf_probe_read_kernel(ports, sizeof(ports), l3 + l4off);
                    sp = bpf_ntohs(ports[0]);
                    dp = bpf_ntohs(ports[1]);
                }
                if (!ports_ok(cfg, sp, dp))
                    return 0;
            }
            track = flags & F_TRACK;
        }
    }

    u32 netns = 0, ifindex = 0;
#ifdef HT_TP_BTF
    netns = f->netns;
    ifindex = f->ifindex;
    u64 name0 = f->name0, name1 = f->name1;
#else
    if (!dev) {
#if HT_SKB_LO <= HT_OFF_SKB_DEV && HT_OFF_SKB_DEV + 8 <= HT_SKB_HI
        __builtin_memcpy(&dev, &sk[HT_OFF_SKB_DEV - HT_SKB_LO], 8);
#else
        dev = (void *)rd64(skb, HT_OFF_SKB_DEV);
#endif
    }
    u8 dv[HT_DEV_HI - HT_DEV_LO] = {};
    if (dev) {
        bpf_probe_read_kernel(dv, sizeof(dv), (char *)dev + HT_DEV_LO);
        void *netp;
        __builtin_memcpy(&netp, &dv[HT_OFF_DEV_ND_NET - HT_DEV_LO], 8);
        if (netp)
            netns = net_inum(netp);
        // a dropped skb's dev may point at a device being torn down: without
        // a namespace its index is not trustworthy
        if (netns)
            __builtin_memcpy(&ifindex, &dv[HT_OFF_DEV_IFINDEX - HT_DEV_LO], 4);
    }
    if (!netns) {
        // No device (a socket's queue, a local packet before routing, e.g. an OUTPUT drop):
        // the namespace of the socket that owns it, so the hop is named and the netns
        // filter sees it. ifindex stays 0: the hop says "(no device)".
        void *skp;
#if HT_SKB_LO <= HT_OFF_SKB_SK && HT_OFF_SKB_SK + 8 <= HT_SKB_HI
        __builtin_memcpy(&skp, &sk[HT_OFF_SKB_SK - HT_SKB_LO], 8);
#else
        skp = (void *)rd64(skb, HT_OFF_SKB_SK);
#endif
        if (skp) {
            void *netp = (void *)rd64(skp, HT_OFF_SK_NET);
            if (netp)
                netns = net_inum(netp);
        }
    }
#endif
    if (flags & F_NETNS) {
        if (!netns_ok(cfg, netns))
            return 0;
    }

    if (!now)
        now = bpf_ktime_get_ns();
    if (track) {
        struct track_val nv = {.ts_ns = now, .ident = ident, .proto = proto};
        tracked.update(&key, &nv);
    } else if (hit && kind == HOP_DROP) {
        tracked.delete(&key);
    }

    if (skip)
        return 2;

    m->ts_ns = now;
    m->start = start;
    m->netns = netns;
    m->ifindex = ifindex;
    m->len = len;
    m->wire_len = len + (u32)(data - start);
    // Only the linear part is readable by address; paged data is not copied.
    m->avail = (u32)(data - start) + (len - data_len);
    m->mac_len = mac_len;
    m->protocol = protocol;
#ifdef HT_TP_BTF
    __builtin_memcpy(m->ifname, &name0, 8);
    __builtin_memcpy(m->ifname + 8, &name1, 8);
#else
    // dv is zeroed when there is no device, so the name is empty then
    __builtin_memcpy(m->ifname, &dv[HT_OFF_DEV_NAME - HT_DEV_LO], HT_IFNAMSIZ);
#endif
    return 1;
}

// Write one accepted hop into its slot (in the stage or a ring record).
static __always_inline void put(struct hop_event *e, struct hop_meta *m, void *skb, u8 kind,
                                u32 reason) {
    e->ts_ns = m->ts_ns;
    e->skb = (u64)skb;
    e->netns = m->netns;
    e->ifindex = m->ifindex;
    e->len = m->len;
    e->drop_reason = reason;
    e->kind = kind;
    e->pad = 0;
    e->mac_len = m->mac_len;
    e->protocol = m->protocol;
    e->wire_len = m->wire_len;
    __builtin_memcpy(e->ifname, m->ifname, HT_IFNAMSIZ);
    u64 cap = m->avail;
    // The barrier keeps clang from folding the clamp into a signed 32-bit
    // compare the verifier cannot use as a bound for the read below.
    asm volatile("" : "+r"(cap));
    if (cap > HT_SNAPLEN)
        cap = HT_SNAPLEN;
    if (bpf_probe_read_kernel(e->frame, cap, m->start) < 0)
        cap = 0;
    e->cap_len = cap;
}

static __always_inline void flush(struct hop_batch *b) {
    u32 n = b->count;
    if (n == 0)
        return;
    if (n > HT_BATCH)
        n = HT_BATCH;
    u64 size = 16 + (u64)n * sizeof(struct hop_event);
    if (size > sizeof(struct hop_batch))
        size = sizeof(struct hop_batch);
    if (events.ringbuf_output(b, size, BPF_RB_NO_WAKEUP) < 0)
        count(C_LOST, n);
    else
        count(C_EMITTED, n);
    b->count = 0;
}

static __always_inline int hop(void *skb, void *dev, u8 kind, u32 reason) {
#ifdef HT_TP_BTF
    struct skb_fields f;
    read_fields(&f, skb, dev);
#endif
    int zero = 0;
    struct ht_config *cfg = config.lookup(&zero);
    if (!cfg)
        return 0;
    u32 flags = cfg->flags;
    if (!(flags & F_READY))
        return 0;
    struct hop_meta m;
    int seen = look(&m, skb, dev, kind, cfg, flags HT_FIELDS_PASS);
    if (seen != 1) {
        count(seen ? C_SAMPLED : C_FILTERED, 1);
        return 0;
    }
    struct hop_batch *b = stage.lookup(&zero);
    if (!b)
        return 0;

    // Nesting guard without fetch-and-add (this bcc's LLVM rejects using
    // XADD's result): interrupts nest LIFO on one CPU, so whoever sees
    // busy == 1 right after its own increment owns the stage.
    __sync_fetch_and_add(&b->busy, 1);
    if (*(volatile u32 *)&b->busy != 1) {
        __sync_fetch_and_add(&b->busy, -1);
        struct hop_single *one = events.ringbuf_reserve(sizeof(struct hop_single));
        if (!one) {
            count(C_LOST, 1);
            return 0;
        }
        put(&one->ev[0], &m, skb, kind, reason);
        one->count = 1;
        one->busy = 0;
        one->first_ts = m.ts_ns;
        events.ringbuf_submit(one, BPF_RB_NO_WAKEUP);
        count(C_NESTED, 1);
        count(C_EMITTED, 1);
        return 0;
    }

    u32 idx = b->count;
    if (idx >= HT_BATCH) { // cannot happen (flushed when full); keeps the verifier happy
        flush(b);
        idx = 0;
    }
    if (idx < HT_BATCH) {
        put(&b->ev[idx], &m, skb, kind, reason);
        if (idx == 0)
            b->first_ts = m.ts_ns;
        b->count = idx + 1;
        if (idx + 1 >= HT_BATCH || m.ts_ns - b->first_ts > HT_FLUSH_NS)
            flush(b);
    }
    __sync_fetch_and_add(&b->busy, -1);
    return 0;
}

// HT_PROBE(tp, fn): with HT_TP_BTF a function skb_hops.py loads as tp_btf and
// attaches to tp itself (the ctx is the same array of arguments); without it,
// bcc's raw tracepoint, attached when bcc loads it.
#ifdef HT_TP_BTF
#define HT_PROBE(tp, fn) int fn(struct bpf_raw_tracepoint_args *ctx)
#else
#define HT_PROBE(tp, fn) RAW_TRACEPOINT_PROBE(tp)
#endif

HT_PROBE(netif_receive_skb, ht_rx) {
    return hop((void *)ctx->args[HT_ARG_NETIF_RECEIVE_SKB_SKB], 0, HOP_RX, 0);
}

HT_PROBE(net_dev_start_xmit, ht_tx) {
    return hop((void *)ctx->args[HT_ARG_NET_DEV_START_XMIT_SKB],
               (void *)ctx->args[HT_ARG_NET_DEV_START_XMIT_DEV], HOP_TX, 0);
}

HT_PROBE(kfree_skb, ht_drop) {
    u32 reason = (u32)ctx->args[HT_ARG_KFREE_SKB_REASON];
    if (reason <= HT_REASON_MAX_IGNORED) // consumed, not a drop
        return 0;
    return hop((void *)ctx->args[HT_ARG_KFREE_SKB_SKB], 0, HOP_DROP, reason);
}

// Not attached: the loader runs it on each CPU with BPF_PROG_TEST_RUN so
// that events staged on a CPU that went quiet reach userspace.
int flush_stage(struct bpf_raw_tracepoint_args *ctx) {
    int zero = 0;
    struct hop_batch *b = stage.lookup(&zero);
    if (!b)
        return 0;
    __sync_fetch_and_add(&b->busy, 1);
    if (*(volatile u32 *)&b->busy == 1)
        flush(b);
    __sync_fetch_and_add(&b->busy, -1);
    return 0;
}
