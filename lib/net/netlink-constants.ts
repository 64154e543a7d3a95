/**
 * The numbers of the Linux rtnetlink ABI that Weft's netlink code uses, in one place (linux/socket.h, netlink.h,
 * rtnetlink.h, if_link.h, veth.h). The `netlink` package names some of them as strings; these are the ones it takes or
 * gives as numbers. No I/O here: pure modules (node-dataplane/domain) may import it too.
 */

/** Address families (linux/socket.h). */
export const AF_INET = 2;
export const AF_INET6 = 10;
/** The FDB's family (neighbour entries on a bridge port or VXLAN device). */
export const AF_BRIDGE = 7;

/** Request flags (linux/netlink.h): replace an existing entry, fail if it exists, create if it does not. */
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;

/** The main routing table (RT_TABLE_MAIN). */
export const RT_TABLE_MAIN = 254;
/** Scope of an address or route valid on its link only (RT_SCOPE_LINK). */
export const RT_SCOPE_LINK = 253;
/** Next-hop flag: the gateway is on the link even without a covering route (RTNH_F_ONLINK). */
export const RTNH_F_ONLINK = 4;

/** Message types (linux/rtnetlink.h): the notifications that announce an entry, and those that remove one. */
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;

/** Multicast groups (enum rtnetlink_groups): links, neighbours, IPv4 addresses, IPv4 and IPv6 routes. */
export const RTNLGRP_LINK = 1;
export const RTNLGRP_NEIGH = 3;
export const RTNLGRP_IPV4_IFADDR = 5;
export const RTNLGRP_IPV4_ROUTE = 7;
export const RTNLGRP_IPV6_ROUTE = 11;

/** Link attributes (linux/if_link.h), and those nested in IFLA_LINKINFO and in a veth's IFLA_INFO_DATA. */
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_NET_NS_FD = 28;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const VETH_INFO_PEER = 1;
