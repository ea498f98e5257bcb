#!/usr/bin/env python3
"""Writes the sysfs-like topology fixtures of tuning/testdata/topology/ (one per hardware
profile), the files Linux shows for those servers and that mxgate-tuning reads:

  sys/devices/system/cpu/online
  sys/devices/system/cpu/cpuN/topology/{physical_package_id,core_id,thread_siblings_list}
  sys/devices/system/cpu/cpuN/cache/index3/{level,shared_cpu_list}   (CPUs with an L3)
  sys/devices/system/node/nodeK/{cpulist,meminfo}                    (NUMA machines)
  sys/class/dmi/id/product_name                                       (when DMI is present)
  proc/meminfo

CPU numbering follows the kernel's usual enumeration on these machines: the first thread of
every core, socket by socket, then the second threads in the same order.

usage: make_topology.py [OUT_DIR]   (default tuning/testdata/topology)
"""
import os
import shutil
import sys

# name: (product, sockets, cores per socket, threads per core, nodes per socket,
#        cores per L3 group (0: no L3; the package is the group), memory GiB)
MACHINES = {
    # Xeon 5400 (Harpertown): 4 cores, L2 shared by pairs, no L3; memory behind the front-side bus.
    "hp-proliant-dl360-g5": ("ProLiant DL360 G5", 2, 4, 1, 0, 0, 16),
    "hp-proliant-dl380-g5": ("ProLiant DL380 G5", 2, 4, 1, 0, 0, 32),
    # Xeon 5300 (Clovertown): 4 cores, no L3, front-side bus.
    "ibm-x3650": ("IBM System x3650 -[79792AG]-", 2, 4, 1, 0, 0, 16),
    "fujitsu-primergy-rx300-s3": ("PRIMERGY RX300 S3", 2, 4, 1, 0, 0, 16),
    "intel-s5000": ("S5000PSL", 2, 4, 1, 0, 0, 8),
    # A small appliance: one dual-core Core 2, no L3.
    "lex-appliance": ("Lex Computech CV860A", 1, 2, 1, 0, 0, 4),
    # Xeon Gold 6130: 16 cores with Hyper-Threading, one node and one L3 per socket.
    "xeon-scalable-2s": ("PowerEdge R640", 2, 16, 2, 1, 16, 192),
    # EPYC 7502P in NPS4: 32 cores, SMT, four nodes, an L3 per 4-core CCX.
    "amd-epyc-nps4": ("ProLiant DL325 Gen10 Plus", 1, 32, 2, 4, 4, 256),
    # A cloud VM with 4 vCPUs: 2 cores x 2 threads, no DMI product we match on.
    "cloud-4vcpu": ("", 1, 2, 2, 0, 2, 16),
    # A 2-core VM like the development machine: 2 cores, no SMT, one L3.
    "vm-2core": ("", 1, 2, 1, 0, 2, 24),
    # Something else: 1 socket, 6 cores, SMT, no DMI.
    "generic": ("", 1, 6, 2, 0, 6, 32),
}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def fmt(cpus):
    cpus = sorted(cpus)
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def make(root, product, sockets, cores, threads, nodes_per_socket, l3_cores, mem_gib):
    total_cores = sockets * cores
    # cpu id -> (socket, core index within socket, thread)
    cpus = {}
    for t in range(threads):
        for s in range(sockets):
            for c in range(cores):
                cpus[t * total_cores + s * cores + c] = (s, c, t)
    n = len(cpus)
    base = os.path.join(root, "sys/devices/system")
    write(f"{base}/cpu/online", f"0-{n - 1}\n")
    for cpu, (s, c, t) in cpus.items():
        d = f"{base}/cpu/cpu{cpu}"
        write(f"{d}/topology/physical_package_id", f"{s}\n")
        write(f"{d}/topology/core_id", f"{c}\n")
        sib = [i for i, (s2, c2, _) in cpus.items() if s2 == s and c2 == c]
        write(f"{d}/topology/thread_siblings_list", fmt(sib) + "\n")
        if l3_cores:
            g = c // l3_cores
            shared = [i for i, (s2, c2, _) in cpus.items() if s2 == s and c2 // l3_cores == g]
            write(f"{d}/cache/index3/level", "3\n")
            write(f"{d}/cache/index3/shared_cpu_list", fmt(shared) + "\n")
    if nodes_per_socket:
        per_node = cores // nodes_per_socket
        node_mem = mem_gib * 1024 * 1024 // (sockets * nodes_per_socket)
        for s in range(sockets):
            for k in range(nodes_per_socket):
                node = s * nodes_per_socket + k
                mine = [i for i, (s2, c2, _) in cpus.items() if s2 == s and c2 // per_node == k]
                write(f"{base}/node/node{node}/cpulist", fmt(mine) + "\n")
                write(f"{base}/node/node{node}/meminfo",
                      f"Node {node} MemTotal:       {node_mem} kB\nNode {node} MemFree:        {node_mem // 2} kB\n")
    if product:
        write(f"{root}/sys/class/dmi/id/product_name", product + "\n")
    write(f"{root}/proc/meminfo", f"MemTotal:       {mem_gib * 1024 * 1024} kB\nMemFree:        1024 kB\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tuning", "testdata", "topology")
    for name, spec in MACHINES.items():
        root = os.path.join(out, name)
        shutil.rmtree(root, ignore_errors=True)
        make(root, *spec)
        print(name)


if __name__ == "__main__":
    main()
