-- Set (after helpers.lua). KEYS: value, lease, index, lease set, epoch. ARGV: payload, ttl ms, versioned
-- ("1"/"0"), header (format byte, then the version as 8 bytes big-endian), member, fresh epoch.
--
-- A versioned write is refused when the live stored record (current epoch, same header format) carries a higher
-- version. Compared byte by byte because Lua's string `<` follows the server's collation locale.
local function stored_version_is_higher(stored, epoch, header)
  if not stored or not epoch or string.sub(stored, 1, #epoch) ~= epoch then return false end
  local at = #epoch
  if #stored < at + #header or string.byte(stored, at + 1) ~= string.byte(header, 1) then return false end
  for i = 2, #header do
    local old, new = string.byte(stored, at + i), string.byte(header, i)
    if old > new then return true end
    if old < new then return false end
  end
  return false
end

local ttl = tonumber(ARGV[2])
if ARGV[3] == '1'
    and stored_version_is_higher(redis.call('GET', KEYS[1]), redis.call('GET', KEYS[5]), ARGV[4]) then
  return 0
end
store(KEYS, ARGV[5], ARGV[4], ARGV[1], ttl, ARGV[6])
return 1
