/*
 * raft_peer_cert_test.c: which member a peer certificate names (node_peer_cert_member()).
 *
 * The peer transport believes a connection is member N only if its certificate, signed by
 * the cluster CA, names exactly that member with the SAN URI tally://member/N. These
 * certificates are built in memory (unsigned: naming is read before and apart from
 * verification) to reach every branch of the parser.
 */
#include "raft/peer_tls.h"

#include "test.h"

#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* A certificate whose subjectAltName is `san` (OpenSSL's config syntax), or none if NULL. */
static X509 *cert_with(const char *san)
{
    X509 *x = X509_new();
    REQUIRE(x != NULL);
    if (san != NULL) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
        REQUIRE(ext != NULL);
        REQUIRE(X509_add_ext(x, ext, -1) == 1);
        X509_EXTENSION_free(ext);
    }
    return x;
}

static uint64_t member_of(const char *san)
{
    X509 *x = cert_with(san);
    uint64_t id = node_peer_cert_member(x);
    X509_free(x);
    return id;
}

static void names_the_member_of_its_one_member_uri(void)
{
    CHECK(member_of("URI:tally://member/3") == 3);
    CHECK(member_of("DNS:localhost,IP:127.0.0.1,URI:tally://member/7") == 7);
    CHECK(member_of("URI:https://example.org/,URI:tally://member/18446744073709551615") ==
          UINT64_MAX);
}

static void names_nobody_without_a_member_uri(void)
{
    CHECK(member_of(NULL) == 0);
    CHECK(member_of("DNS:localhost,IP:127.0.0.1") == 0);
    CHECK(member_of("URI:tally://members/1") == 0);
    CHECK(member_of("URI:tally://member/") == 0);
    CHECK(member_of("DNS:tally://member/1") == 0); /* a DNS name is not a member name */
}

static void names_nobody_with_a_malformed_id(void)
{
    CHECK(member_of("URI:tally://member/0") == 0);
    CHECK(member_of("URI:tally://member/12x") == 0);
    CHECK(member_of("URI:tally://member/-1") == 0);
    CHECK(member_of("URI:tally://member/ 1") == 0);
    CHECK(member_of("URI:tally://member/18446744073709551616") == 0);  /* 2^64 */
    CHECK(member_of("URI:tally://member/000000000000000000001") == 0); /* over 20 digits */
}

static void names_nobody_when_it_names_two_members(void)
{
    CHECK(member_of("URI:tally://member/1,URI:tally://member/2") == 0);
    CHECK(member_of("URI:tally://member/1,URI:tally://member/1") == 0);
    /* A malformed second name does not make the first ambiguous. */
    CHECK(member_of("URI:tally://member/1,URI:tally://member/x") == 1);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(names_the_member_of_its_one_member_uri);
    TEST(names_nobody_without_a_member_uri);
    TEST(names_nobody_with_a_malformed_id);
    TEST(names_nobody_when_it_names_two_members);
    TEST_MAIN_END;
}
