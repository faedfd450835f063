// The Java conformance runner: executes clients/conformance/scenarios.json against a cachecoord server through
// plain grpc-java stubs (no library: Java has none), to prove a fourth language can speak the contract with the
// generated code alone. `run scenarios` is its only sub-command; see clients/conformance/README.md for the format.
package cachecoord.conformance;

import cachecoord.v1.CacheServiceGrpc;
import cachecoord.v1.CacheServiceOuterClass.BatchGetRequest;
import cachecoord.v1.CacheServiceOuterClass.BatchGetResponse;
import cachecoord.v1.CacheServiceOuterClass.BatchGetResult;
import cachecoord.v1.CacheServiceOuterClass.BatchSetRequest;
import cachecoord.v1.CacheServiceOuterClass.BatchSetResponse;
import cachecoord.v1.CacheServiceOuterClass.GetRequest;
import cachecoord.v1.CacheServiceOuterClass.GetResponse;
import cachecoord.v1.CacheServiceOuterClass.InvalidatePatternRequest;
import cachecoord.v1.CacheServiceOuterClass.InvalidateRequest;
import cachecoord.v1.CacheServiceOuterClass.ReleaseLeaseRequest;
import cachecoord.v1.CacheServiceOuterClass.RenewLeaseRequest;
import cachecoord.v1.CacheServiceOuterClass.SetRequest;
import cachecoord.v1.CacheServiceOuterClass.StatsRequest;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import com.google.protobuf.ByteString;
import com.google.protobuf.CodedInputStream;
import com.google.protobuf.Duration;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

public final class Runner {
    /** The per-call deadline, as the libraries' default. */
    private static final long DEADLINE_MS = 5000;

    private static final Metadata.Key<byte[]> STATUS_DETAILS =
            Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);
    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

    /** A step whose answer did not match its expectation. */
    private static final class Mismatch extends Exception {
        Mismatch(String message) {
            super(message);
        }
    }

    /** The runner's load function failed on purpose (`load_fails`): expected as the error code LOAD_FN. */
    private static final class LoadFnFailed extends RuntimeException {
        LoadFnFailed(String key) {
            super("load_fn failed for " + key);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 0 || !args[0].equals("scenarios")) {
            System.err.println("usage: run scenarios --target ADDR --scenarios FILE --run-id ID [--token T]");
            System.exit(2);
        }
        Map<String, String> flags = new HashMap<>();
        for (int i = 1; i + 1 < args.length; i += 2) {
            flags.put(args[i], args[i + 1]);
        }
        String target = required(flags, "--target");
        String file = required(flags, "--scenarios");
        String runId = required(flags, "--run-id");
        String token = flags.get("--token");

        JsonObject suite = JsonParser.parseString(Files.readString(Path.of(file))).getAsJsonObject();
        ManagedChannel channel = NettyChannelBuilder.forTarget(target).usePlaintext().build();
        try {
            for (JsonElement element : suite.getAsJsonArray("scenarios")) {
                JsonObject scenario = element.getAsJsonObject();
                String name = scenario.get("name").getAsString();
                JsonObject line = new JsonObject();
                line.addProperty("scenario", name);
                try {
                    String auth = scenario.has("auth") ? scenario.get("auth").getAsString() : "token";
                    String bearer = switch (auth) {
                        case "token" -> token;
                        case "none" -> null;
                        case "wrong" -> "wrong-token";
                        default -> throw new Mismatch("unknown auth " + auth);
                    };
                    new Scenario(channel, bearer, runId).run(scenario.getAsJsonArray("steps"));
                    line.addProperty("pass", true);
                    line.addProperty("detail", "");
                } catch (Mismatch | RuntimeException failure) {
                    line.addProperty("pass", false);
                    line.addProperty("detail", String.valueOf(failure.getMessage()));
                }
                System.out.println(line);
                System.out.flush();
            }
        } finally {
            channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
        }
    }

    private static String required(Map<String, String> flags, String name) {
        String value = flags.get(name);
        if (value == null) {
            System.err.println("missing " + name);
            System.exit(2);
        }
        return value;
    }

    /** One scenario: its caller's credentials and the lease tokens its steps saved. */
    private static final class Scenario {
        private final ManagedChannel channel;
        private final Metadata headers = new Metadata();
        private final String runId;
        private final Map<String, ByteString> leases = new HashMap<>();

        Scenario(ManagedChannel channel, String bearer, String runId) {
            this.channel = channel;
            this.runId = runId;
            if (bearer != null) {
                headers.put(AUTHORIZATION, "Bearer " + bearer);
            }
        }

        /** A stub with a fresh deadline for one call (grpc-java fixes the deadline when the stub is made). */
        private CacheServiceGrpc.CacheServiceBlockingStub stub() {
            return CacheServiceGrpc.newBlockingStub(channel)
                    .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
                    .withDeadlineAfter(DEADLINE_MS, TimeUnit.MILLISECONDS);
        }

        void run(JsonArray steps) throws Mismatch {
            for (int i = 0; i < steps.size(); i++) {
                JsonObject step = substitute(steps.get(i)).getAsJsonObject();
                String op = step.get("op").getAsString();
                JsonObject expect = step.has("expect") ? step.getAsJsonObject("expect") : new JsonObject();
                try {
                    JsonObject error = expect.has("error") ? expect.getAsJsonObject("error") : null;
                    try {
                        apply(op, step, expect);
                    } catch (StatusRuntimeException failed) {
                        checkError(error, failed.getStatus().getCode().name(), reason(failed), failed.getMessage());
                        continue;
                    } catch (LoadFnFailed failed) {
                        checkError(error, "LOAD_FN", null, failed.getMessage());
                        continue;
                    }
                    if (error != null) {
                        throw new Mismatch("succeeded; expected " + error);
                    }
                } catch (Mismatch mismatch) {
                    throw new Mismatch("step " + (i + 1) + " (" + op + "): " + mismatch.getMessage());
                }
            }
        }

        /** `{run}` replaced by the run id in every string of the step, its expectation included. */
        private JsonElement substitute(JsonElement element) {
            if (element.isJsonPrimitive() && element.getAsJsonPrimitive().isString()) {
                return new JsonPrimitive(element.getAsString().replace("{run}", runId));
            }
            if (element.isJsonArray()) {
                JsonArray out = new JsonArray();
                element.getAsJsonArray().forEach(item -> out.add(substitute(item)));
                return out;
            }
            if (element.isJsonObject()) {
                JsonObject out = new JsonObject();
                element.getAsJsonObject().entrySet().forEach(e -> out.add(e.getKey(), substitute(e.getValue())));
                return out;
            }
            return element;
        }

        private void checkError(JsonObject error, String code, String reason, String message) throws Mismatch {
            if (error == null) {
                throw new Mismatch("failed: " + code + " " + reason + ": " + message);
            }
            String wantCode = error.get("code").getAsString();
            if (!wantCode.equals(code)) {
                throw new Mismatch("code " + code + " (reason " + reason + ", " + message + "), expected " + wantCode);
            }
            if (error.has("reason") && !error.get("reason").getAsString().equals(reason)) {
                throw new Mismatch("reason " + reason + " (" + message + "), expected " + error.get("reason"));
            }
        }

        private void apply(String op, JsonObject step, JsonObject expect) throws Mismatch {
            switch (op) {
                case "get" -> {
                    boolean cacheOnly = step.has("cache_only") && step.get("cache_only").getAsBoolean();
                    GetResponse answer = stub().get(
                            GetRequest.newBuilder().setKey(text(step, "key")).setCacheOnly(cacheOnly).build());
                    checkFound(expect, answer.getFound(), answer.getValue());
                    if (expect.has("source")) {
                        String source = answer.getSource().name().replaceFirst("^SOURCE_", "");
                        same("source", expect.get("source").getAsString(), source);
                    }
                }
                case "get_with_lease" -> {
                    GetResponse answer = stub().get(
                            GetRequest.newBuilder().setKey(text(step, "key")).setLease(true).build());
                    checkFound(expect, answer.getFound(), answer.getValue());
                    boolean leased = !answer.getLeaseToken().isEmpty();
                    if (expect.has("lease")) {
                        same("lease", expect.get("lease").getAsBoolean(), leased);
                    }
                    if (step.has("save") && leased) {
                        leases.put(step.get("save").getAsString(), answer.getLeaseToken());
                    }
                }
                case "get_many" -> {
                    BatchGetRequest.Builder request = BatchGetRequest.newBuilder();
                    step.getAsJsonArray("keys").forEach(k -> request.addKeys(k.getAsString()));
                    BatchGetResponse answer = stub().batchGet(request.build());
                    JsonArray want = expect.getAsJsonArray("results");
                    same("result count", want.size(), answer.getResultsCount());
                    for (int i = 0; i < want.size(); i++) {
                        JsonObject w = want.get(i).getAsJsonObject();
                        BatchGetResult got = answer.getResults(i);
                        if (w.has("key")) {
                            same("results[" + i + "].key", w.get("key").getAsString(), got.getKey());
                        }
                        try {
                            checkFound(w, got.getFound(), got.getValue());
                        } catch (Mismatch m) {
                            throw new Mismatch("results[" + i + "]: " + m.getMessage());
                        }
                    }
                }
                case "set" -> stub().set(setRequest(step));
                case "set_many" -> {
                    BatchSetRequest.Builder request = BatchSetRequest.newBuilder();
                    for (JsonElement entry : step.getAsJsonArray("entries")) {
                        request.addEntries(setRequest(entry.getAsJsonObject()));
                    }
                    BatchSetResponse answer = stub().batchSet(request.build());
                    if (expect.has("written")) {
                        same("written", expect.get("written").getAsLong(), answer.getWritten());
                    }
                    if (expect.has("stale_keys")) {
                        same("stale_keys", strings(expect.getAsJsonArray("stale_keys")), answer.getStaleKeysList());
                    }
                    if (expect.has("lease_lost_keys")) {
                        same("lease_lost_keys", strings(expect.getAsJsonArray("lease_lost_keys")),
                                answer.getLeaseLostKeysList());
                    }
                }
                case "invalidate" -> {
                    InvalidateRequest.Builder request = InvalidateRequest.newBuilder();
                    step.getAsJsonArray("keys").forEach(k -> request.addKeys(k.getAsString()));
                    checkDeleted(expect, stub().invalidate(request.build()).getDeleted());
                }
                case "invalidate_pattern" -> {
                    InvalidatePatternRequest request =
                            InvalidatePatternRequest.newBuilder().setPattern(text(step, "pattern")).build();
                    checkDeleted(expect, stub().invalidatePattern(request).getDeleted());
                }
                case "release_lease" -> {
                    ReleaseLeaseRequest request = ReleaseLeaseRequest.newBuilder()
                            .setKey(text(step, "key")).setLeaseToken(saved(step)).build();
                    boolean released = stub().releaseLease(request).getReleased();
                    if (expect.has("released")) {
                        same("released", expect.get("released").getAsBoolean(), released);
                    }
                }
                case "renew_lease" -> stub().renewLease(RenewLeaseRequest.newBuilder()
                        .setKey(text(step, "key")).setLeaseToken(saved(step)).build());
                case "get_or_load" -> {
                    int[] loads = {0};
                    String key = text(step, "key");
                    boolean fails = step.has("load_fails") && step.get("load_fails").getAsBoolean();
                    String loadValue = step.has("load_value") ? step.get("load_value").getAsString() : "";
                    ByteString value = getOrLoad(key, ttl(step), () -> {
                        loads[0]++;
                        if (fails) {
                            throw new LoadFnFailed(key);
                        }
                        return ByteString.copyFromUtf8(loadValue);
                    });
                    if (expect.has("value")) {
                        same("value", expect.get("value").getAsString(), value.toStringUtf8());
                    }
                    if (expect.has("loads")) {
                        same("loads", expect.get("loads").getAsInt(), loads[0]);
                    }
                }
                case "stats" -> stub().stats(StatsRequest.getDefaultInstance());
                default -> throw new Mismatch("unknown op " + op);
            }
        }

        /**
         * The leased cache-aside loop over plain stubs (Java has no library), as docs/leases.md and
         * examples/python/cache_aside.py run it: Get with lease; a value is the answer (with a token too it is
         * stale and ours to refresh); with a token, load and Set with it (LEASE_LOST: the loaded value is still the
         * answer, just not cached); a failed load releases the lease; no value and no token: load, do not cache.
         */
        private ByteString getOrLoad(String key, Duration ttl, java.util.function.Supplier<ByteString> load) {
            GetResponse answer = stub().get(GetRequest.newBuilder().setKey(key).setLease(true).build());
            ByteString token = answer.getLeaseToken();
            if (answer.getFound()) {
                if (!token.isEmpty()) {
                    fill(key, ttl, token, load);
                }
                return answer.getValue();
            }
            return fill(key, ttl, token, load);
        }

        /** Loads `key` and, holding `token`, caches it; releases the lease when the load fails. */
        private ByteString fill(String key, Duration ttl, ByteString token,
                java.util.function.Supplier<ByteString> load) {
            ByteString value;
            try {
                value = load.get();
            } catch (RuntimeException failed) {
                if (!token.isEmpty()) {
                    stub().releaseLease(ReleaseLeaseRequest.newBuilder().setKey(key).setLeaseToken(token).build());
                }
                throw failed;
            }
            if (!token.isEmpty()) {
                SetRequest.Builder set = SetRequest.newBuilder().setKey(key).setValue(value).setLeaseToken(token);
                if (ttl != null) {
                    set.setTtl(ttl);
                }
                try {
                    stub().set(set.build());
                } catch (StatusRuntimeException refused) {
                    if (refused.getStatus().getCode() != Status.Code.FAILED_PRECONDITION) {
                        throw refused;
                    }
                }
            }
            return value;
        }

        private SetRequest setRequest(JsonObject step) throws Mismatch {
            SetRequest.Builder request = SetRequest.newBuilder()
                    .setKey(text(step, "key"))
                    .setValue(ByteString.copyFromUtf8(text(step, "value")));
            Duration ttl = ttl(step);
            if (ttl != null) {
                request.setTtl(ttl);
            }
            if (step.has("version")) {
                request.setVersion(step.get("version").getAsLong());
            }
            if (step.has("lease")) {
                request.setLeaseToken(saved(step));
            }
            return request.build();
        }

        private ByteString saved(JsonObject step) throws Mismatch {
            String name = step.get("lease").getAsString();
            ByteString token = leases.get(name);
            if (token == null) {
                throw new Mismatch("no lease token saved as " + name);
            }
            return token;
        }
    }

    private static Duration ttl(JsonObject step) {
        if (!step.has("ttl_secs")) {
            return null;
        }
        double secs = step.get("ttl_secs").getAsDouble();
        long whole = (long) Math.floor(secs);
        return Duration.newBuilder().setSeconds(whole).setNanos((int) Math.round((secs - whole) * 1e9)).build();
    }

    private static String text(JsonObject step, String field) throws Mismatch {
        if (!step.has(field)) {
            throw new Mismatch("step has no " + field);
        }
        return step.get(field).getAsString();
    }

    private static List<String> strings(JsonArray array) {
        List<String> out = new ArrayList<>();
        array.forEach(e -> out.add(e.getAsString()));
        return out;
    }

    private static void same(String what, Object want, Object got) throws Mismatch {
        if (!want.equals(got)) {
            throw new Mismatch(what + " " + got + ", expected " + want);
        }
    }

    private static void checkFound(JsonObject expect, boolean found, ByteString value) throws Mismatch {
        if (expect.has("found")) {
            same("found", expect.get("found").getAsBoolean(), found);
        }
        if (expect.has("value")) {
            same("value", expect.get("value").getAsString(), value.toStringUtf8());
        }
    }

    private static void checkDeleted(JsonObject expect, long deleted) throws Mismatch {
        if (expect.has("deleted")) {
            same("deleted", expect.get("deleted").getAsLong(), deleted);
        }
        if (expect.has("deleted_at_least") && deleted < expect.get("deleted_at_least").getAsLong()) {
            throw new Mismatch("deleted " + deleted + ", expected at least " + expect.get("deleted_at_least"));
        }
    }

    /**
     * The ErrorInfo reason of a failed call, decoded from the `grpc-status-details-bin` trailer by hand: a
     * google.rpc.Status (field 3: repeated Any) whose Any (1: type_url, 2: value) holds a google.rpc.ErrorInfo
     * (1: reason). Debian ships no google.rpc stubs for Java, and these three field numbers are all we need.
     */
    private static String reason(StatusRuntimeException failed) {
        Metadata trailers = failed.getTrailers();
        byte[] details = trailers == null ? null : trailers.get(STATUS_DETAILS);
        if (details == null) {
            return null;
        }
        try {
            for (ByteString any : fields(ByteString.copyFrom(details), 3)) {
                List<ByteString> typeUrl = fields(any, 1);
                List<ByteString> value = fields(any, 2);
                if (!typeUrl.isEmpty() && typeUrl.get(0).toStringUtf8().endsWith("google.rpc.ErrorInfo")
                        && !value.isEmpty()) {
                    List<ByteString> reason = fields(value.get(0), 1);
                    return reason.isEmpty() ? "" : reason.get(0).toString(StandardCharsets.UTF_8);
                }
            }
        } catch (IOException malformed) {
            return "(undecodable details: " + malformed.getMessage() + ")";
        }
        return null;
    }

    /** The length-delimited fields numbered `number` of the protobuf message `message`. */
    private static List<ByteString> fields(ByteString message, int number) throws IOException {
        List<ByteString> out = new ArrayList<>();
        CodedInputStream input = message.newCodedInput();
        for (int tag = input.readTag(); tag != 0; tag = input.readTag()) {
            if (tag >>> 3 == number && (tag & 7) == 2) {
                out.add(input.readBytes());
            } else {
                input.skipField(tag);
            }
        }
        return out;
    }
}
