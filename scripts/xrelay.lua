-- Wireshark dissector for the xrelay protocol (docs/wire.md, version 1).
--
--   tshark -X lua_script:scripts/xrelay.lua -r capture.pcap -V
--   wireshark -X lua_script:scripts/xrelay.lua capture.pcap
--
-- Relay frames are found on UDP port 9555, in raw Ethernet frames of
-- EtherType 0x88B5, and heuristically on any UDP port (the magic "XR",
-- version 1). Every header and body field of docs/wire.md is named; frames
-- that break the format get an expert error instead of a guess.

local xrelay = Proto("xrelay", "xrelay relay protocol")

local kinds = {
    [0x01] = "SESSION_OPEN", [0x02] = "SESSION_REPLY", [0x03] = "SESSION_CLOSE",
    [0x10] = "RPC_CALL", [0x11] = "RPC_REPLY", [0x12] = "RPC_ACK",
    [0x20] = "SIGNAL", [0x21] = "SIGNAL_ACK",
    [0x30] = "ROM_ANNOUNCE", [0x31] = "ROM_REQUEST", [0x32] = "ROM_CHUNK", [0x33] = "ROM_ACK",
    [0x40] = "HEARTBEAT",
}
local services = { [1] = "RPC", [2] = "ROM", [3] = "signal" }
local open_status = { [0] = "accepted", [-1] = "denied by policy", [-2] = "no route", [-3] = "no room" }
local close_reasons = { [0] = "normal", [-1] = "revoked by policy", [-2] = "unknown session" }
local origins = { [0] = "client", [1] = "server" }
local acked = { [0] = "call fragments", [1] = "reply fragments" }
local rom_states = { [0] = "valid", [1] = "removed" }
local exceptions = { [0] = "success", [-1] = "invalid object", [-2] = "invalid opcode", [-3] = "bad arguments" }

local f = xrelay.fields
-- Header (section 3).
f.magic = ProtoField.string("xrelay.magic", "Magic")
f.version = ProtoField.uint8("xrelay.version", "Version")
f.header_len = ProtoField.uint8("xrelay.header_len", "Header length")
f.kind = ProtoField.uint8("xrelay.kind", "Kind", base.HEX, kinds)
f.flags = ProtoField.uint8("xrelay.flags", "Flags", base.HEX)
f.flag_auth = ProtoField.bool("xrelay.flags.auth", "AUTH", 8, nil, 0x01)
f.flag_encrypted = ProtoField.bool("xrelay.flags.encrypted", "ENCRYPTED", 8, nil, 0x02)
f.body_len = ProtoField.uint16("xrelay.body_len", "Body length")
f.channel = ProtoField.uint32("xrelay.channel", "Channel")
f.sequence = ProtoField.uint64("xrelay.sequence", "Sequence")
f.tag = ProtoField.bytes("xrelay.tag", "Authentication tag")
-- Sessions (section 6).
f.open_id = ProtoField.uint32("xrelay.open_id", "Open id")
f.service = ProtoField.uint8("xrelay.service", "Service", base.DEC, services)
f.label_len = ProtoField.uint16("xrelay.label_len", "Label length")
f.label = ProtoField.string("xrelay.label", "Label")
f.status = ProtoField.int32("xrelay.status", "Status", base.DEC, open_status)
f.reason = ProtoField.int32("xrelay.reason", "Reason", base.DEC, close_reasons)
f.origin = ProtoField.uint8("xrelay.origin", "Origin", base.DEC, origins)
-- RPC (section 7).
f.request_id = ProtoField.uint64("xrelay.request_id", "Request id")
f.interface = ProtoField.uint32("xrelay.interface", "Interface", base.HEX)
f.opcode = ProtoField.uint16("xrelay.opcode", "Opcode")
f.exception = ProtoField.int32("xrelay.exception", "Exception", base.DEC, exceptions)
f.frag_index = ProtoField.uint16("xrelay.frag_index", "Fragment index")
f.frag_count = ProtoField.uint16("xrelay.frag_count", "Fragment count")
f.offset32 = ProtoField.uint32("xrelay.offset", "Offset")
f.total_len = ProtoField.uint32("xrelay.total_len", "Total length")
f.acked = ProtoField.uint8("xrelay.acked", "Acknowledged", base.DEC, acked)
f.base16 = ProtoField.uint16("xrelay.base", "Base")
f.bitmap = ProtoField.bytes("xrelay.bitmap", "Bitmap")
f.data = ProtoField.bytes("xrelay.data", "Data")
-- Signals (section 8).
f.context = ProtoField.uint32("xrelay.context", "Context")
f.count = ProtoField.uint64("xrelay.count", "Count (cumulative)")
-- ROM (section 9).
f.module = ProtoField.uint32("xrelay.module", "Module")
f.state = ProtoField.uint8("xrelay.state", "State", base.DEC, rom_states)
f.version64 = ProtoField.uint64("xrelay.rom_version", "ROM version")
f.size = ProtoField.uint64("xrelay.size", "Size")
f.chunk_size = ProtoField.uint32("xrelay.chunk_size", "Chunk size")
f.hash = ProtoField.bytes("xrelay.hash", "BLAKE3 hash")
f.have_version = ProtoField.uint64("xrelay.have_version", "Have version")
f.offset64 = ProtoField.uint64("xrelay.rom_offset", "Offset")
f.window = ProtoField.uint32("xrelay.window", "Window")
f.base32 = ProtoField.uint32("xrelay.rom_base", "Base")
-- Heartbeat (section 10).
f.incarnation = ProtoField.uint64("xrelay.incarnation", "Incarnation", base.HEX)
f.send_time = ProtoField.uint64("xrelay.send_time", "Send time (ns)")
f.echo_time = ProtoField.uint64("xrelay.echo_time", "Echo time (ns)")
f.reserved = ProtoField.bytes("xrelay.reserved", "Reserved")

local e_malformed = ProtoExpert.new("xrelay.malformed", "Malformed relay frame",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_reserved = ProtoExpert.new("xrelay.reserved_set", "Reserved bits set",
    expert.group.PROTOCOL, expert.severity.WARN)
local e_unknown = ProtoExpert.new("xrelay.unknown_kind", "Unknown frame kind (receivers drop and count it)",
    expert.group.UNDECODED, expert.severity.WARN)
local e_trailing = ProtoExpert.new("xrelay.trailing", "Bytes after the relay frame",
    expert.group.MALFORMED, expert.severity.ERROR)
xrelay.experts = { e_malformed, e_reserved, e_unknown, e_trailing }

-- Each body: {width in bytes, or "rest" / "label", field} in order.
local rest = "rest"
local bodies = {
    [0x01] = { { 4, f.open_id }, { 1, f.service }, { 1, f.reserved }, { 2, f.label_len }, { "label", f.label } },
    [0x02] = { { 4, f.open_id }, { 4, f.status } },
    [0x03] = { { 4, f.reason }, { 1, f.origin }, { 3, f.reserved } },
    [0x10] = { { 8, f.request_id }, { 4, f.interface }, { 2, f.opcode }, { 2, f.frag_index },
               { 2, f.frag_count }, { 2, f.reserved }, { 4, f.offset32 }, { 4, f.total_len }, { rest, f.data } },
    [0x11] = { { 8, f.request_id }, { 4, f.exception }, { 2, f.frag_index }, { 2, f.frag_count },
               { 4, f.offset32 }, { 4, f.total_len }, { rest, f.data } },
    [0x12] = { { 8, f.request_id }, { 1, f.acked }, { 1, f.reserved }, { 2, f.base16 }, { rest, f.bitmap } },
    [0x20] = { { 4, f.context }, { 4, f.reserved }, { 8, f.count } },
    [0x21] = { { 4, f.context }, { 4, f.reserved }, { 8, f.count } },
    [0x30] = { { 4, f.module }, { 1, f.state }, { 3, f.reserved }, { 8, f.version64 }, { 8, f.size },
               { 4, f.chunk_size }, { 4, f.reserved }, { 32, f.hash } },
    [0x31] = { { 4, f.module }, { 4, f.reserved }, { 8, f.have_version } },
    [0x32] = { { 4, f.module }, { 4, f.reserved }, { 8, f.version64 }, { 8, f.offset64 }, { rest, f.data } },
    [0x33] = { { 4, f.module }, { 4, f.window }, { 8, f.version64 }, { 4, f.base32 }, { 4, f.reserved },
               { rest, f.bitmap } },
    [0x40] = { { 8, f.incarnation }, { 8, f.send_time }, { 8, f.echo_time } },
}

local bytes_fields = { [f.reserved] = true, [f.bitmap] = true, [f.data] = true, [f.hash] = true }

local function dissect_body(kind, tvb, tree, pinfo)
    local layout = bodies[kind]
    if layout == nil then
        tree:add_proto_expert_info(e_unknown)
        return
    end
    local pos, len = 0, tvb:len()
    local label_len = 0
    for _, item in ipairs(layout) do
        local width, field = item[1], item[2]
        if width == rest then
            width = len - pos
        elseif width == "label" then
            width = label_len
        end
        if pos + width > len then
            tree:add_proto_expert_info(e_malformed, "body shorter than its fields")
            return
        end
        local range = tvb:range(pos, width)
        if bytes_fields[field] or width == 0 then
            if width > 0 then
                local ti = tree:add(field, range)
                if field == f.reserved then
                    for i = 0, width - 1 do
                        if range:range(i, 1):uint() ~= 0 then
                            ti:add_proto_expert_info(e_reserved)
                            break
                        end
                    end
                end
            end
        elseif field == f.label then
            tree:add(field, range)
        else
            tree:add_le(field, range)
        end
        if field == f.label_len then
            label_len = range:le_uint()
        end
        pos = pos + width
    end
    if pos < len then
        tree:add_proto_expert_info(e_malformed, "bytes after the body's fields")
    end
end

local function dissect(tvb, pinfo, root)
    if tvb:len() < 20 or tvb:range(0, 2):string() ~= "XR" then
        return 0
    end
    pinfo.cols.protocol = "xrelay"
    local header_len = tvb:range(3, 1):uint()
    local kind = tvb:range(4, 1):uint()
    local flags = tvb:range(5, 1):uint()
    local body_len = tvb:range(6, 2):le_uint()
    local trailer = (bit.band(flags, 1) ~= 0) and 16 or 0
    local total = header_len + body_len + trailer
    local tree = root:add(xrelay, tvb:range(0, math.min(total, tvb:len())))
    local header = tree:add(xrelay, tvb:range(0, math.min(header_len, tvb:len())), "Header")
    header:add(f.magic, tvb:range(0, 2))
    header:add(f.version, tvb:range(2, 1))
    header:add(f.header_len, tvb:range(3, 1))
    header:add(f.kind, tvb:range(4, 1))
    local flag_tree = header:add(f.flags, tvb:range(5, 1))
    flag_tree:add(f.flag_auth, tvb:range(5, 1))
    flag_tree:add(f.flag_encrypted, tvb:range(5, 1))
    header:add_le(f.body_len, tvb:range(6, 2))
    header:add_le(f.channel, tvb:range(8, 4))
    header:add_le(f.sequence, tvb:range(12, 8))
    local name = kinds[kind] or string.format("kind 0x%02x", kind)
    tree:append_text(", " .. name .. ", channel " .. tvb:range(8, 4):le_uint())
    pinfo.cols.info:set(name .. " ch=" .. tvb:range(8, 4):le_uint() .. " seq=" ..
        tostring(tvb:range(12, 8):le_uint64()))
    if tvb:range(2, 1):uint() ~= 1 or header_len < 20 or header_len % 4 ~= 0 then
        tree:add_proto_expert_info(e_malformed, "unsupported version or header length")
        return tvb:len()
    end
    if total > tvb:len() then
        tree:add_proto_expert_info(e_malformed, "frame longer than the packet")
        return tvb:len()
    end
    if bit.band(flags, 0xfc) ~= 0 then
        tree:add_proto_expert_info(e_malformed, "reserved flag set")
    end
    local body = tree:add(xrelay, tvb:range(header_len, body_len), name)
    if bit.band(flags, 2) ~= 0 then
        body:add(f.data, tvb:range(header_len, body_len)):append_text(" (encrypted)")
    else
        dissect_body(kind, tvb:range(header_len, body_len):tvb(), body, pinfo)
    end
    if trailer > 0 then
        tree:add(f.tag, tvb:range(header_len + body_len, 16))
    end
    if total < tvb:len() and pinfo.match_uint ~= 0x88B5 then
        -- Over UDP the datagram is exactly one frame (docs/wire.md 2.1);
        -- raw Ethernet frames may carry padding.
        tree:add_proto_expert_info(e_trailing)
    end
    return total
end

function xrelay.dissector(tvb, pinfo, root)
    return dissect(tvb, pinfo, root)
end

-- On other UDP ports only what is certainly a relay frame: the magic,
-- version 1, a sane header length, a known kind, no reserved flag, and
-- lengths that add up to the datagram.
local function heuristic(tvb, pinfo, root)
    if tvb:len() < 20 or tvb:range(0, 2):string() ~= "XR" or tvb:range(2, 1):uint() ~= 1 then
        return false
    end
    local header_len = tvb:range(3, 1):uint()
    local flags = tvb:range(5, 1):uint()
    local trailer = (bit.band(flags, 1) ~= 0) and 16 or 0
    if header_len < 20 or header_len % 4 ~= 0 or kinds[tvb:range(4, 1):uint()] == nil
        or bit.band(flags, 0xfc) ~= 0
        or header_len + tvb:range(6, 2):le_uint() + trailer ~= tvb:len() then
        return false
    end
    dissect(tvb, pinfo, root)
    return true
end

DissectorTable.get("udp.port"):add(9555, xrelay)
DissectorTable.get("ethertype"):add(0x88B5, xrelay)
xrelay:register_heuristic("udp", heuristic)
